//! The one place the binaries read the wall clock, so `domain` stays a pure function of its
//! inputs.

use domain::Timestamp;

pub fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// Redis' clock: the one every decision shared between processes is timed by (schedules,
/// consumer liveness, budgets), so a process whose own clock is off can neither release a
/// schedule early nor mistake live consumers for dead ones. On a cluster it is the clock of
/// the master serving `key`, the one the scripts that change `key` read.
pub async fn redis_now<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    key: &str,
) -> Result<Timestamp, crate::StoreError> {
    let (seconds, micros): (i64, i64) = redis::cmd("EVAL")
        .arg("return redis.call('TIME')")
        .arg(1)
        .arg(key)
        .query_async(conn)
        .await?;
    Timestamp::from_millis(seconds * 1000 + micros / 1000)
        .ok_or_else(|| crate::StoreError::Corrupt(format!("redis TIME {seconds}.{micros}")))
}
