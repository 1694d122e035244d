//! When a submitted action starts.

use crate::time::Timestamp;

/// A requested start this close to the past is "now": client clocks drift, and a client
/// that sends its own current time should not be refused for a few milliseconds of skew.
pub const CLOCK_SKEW_TOLERANCE_MS: i64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("scheduledFor is {late_by_ms} ms in the past")]
    InPast { late_by_ms: i64 },
    #[error("scheduledFor is more than {horizon_days} days ahead")]
    BeyondHorizon { horizon_days: u32 },
}

/// The time the action's batches are queued: `None` for now. `horizon_days` bounds how far
/// ahead an action may be scheduled.
pub fn start_time(
    requested: Option<Timestamp>,
    now: Timestamp,
    horizon_days: u32,
) -> Result<Option<Timestamp>, ScheduleError> {
    let Some(at) = requested else {
        return Ok(None);
    };
    let ahead_ms = at.millis_since(now);
    if ahead_ms < -CLOCK_SKEW_TOLERANCE_MS {
        return Err(ScheduleError::InPast {
            late_by_ms: -ahead_ms,
        });
    }
    if ahead_ms > i64::from(horizon_days) * 86_400_000 {
        return Err(ScheduleError::BeyondHorizon { horizon_days });
    }
    Ok((ahead_ms > 0).then_some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn the_edges() {
        let now = at(0);
        assert_eq!(start_time(None, now, 30), Ok(None));
        assert_eq!(start_time(Some(at(1)), now, 30), Ok(Some(at(1))));
        assert_eq!(start_time(Some(now), now, 30), Ok(None));
        assert_eq!(start_time(Some(at(-5_000)), now, 30), Ok(None));
        assert_eq!(
            start_time(Some(at(-5_001)), now, 30),
            Err(ScheduleError::InPast { late_by_ms: 5_001 })
        );
        let horizon = 30 * 86_400_000;
        assert_eq!(
            start_time(Some(at(horizon)), now, 30),
            Ok(Some(at(horizon)))
        );
        assert_eq!(
            start_time(Some(at(horizon + 1)), now, 30),
            Err(ScheduleError::BeyondHorizon { horizon_days: 30 })
        );
    }

    proptest! {
        /// Accepted starts are never in the past and never beyond the horizon.
        #[test]
        fn accepted_starts_lie_between_now_and_the_horizon(offset in -10_000_000i64..10_000_000_000i64) {
            let now = at(0);
            if let Ok(Some(start)) = start_time(Some(at(offset)), now, 100) {
                prop_assert!(start > now);
                prop_assert!(start.millis_since(now) <= 100 * 86_400_000);
            }
        }
    }
}
