//! The one place the binaries read the wall clock, so `domain` stays a pure function of its
//! inputs.

use domain::Timestamp;

pub fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}
