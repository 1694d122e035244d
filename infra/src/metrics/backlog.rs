//! Gauges of what waits in Redis, per partition, sampled every few seconds by the process
//! that owns each stream: the consumer samples the work, dispatch, schedule and dead-letter
//! keys, the projector its feeds. Every process of a kind reports the same values: sum
//! nothing across instances, take `max by (partition)`.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::names;
use crate::keys::Keys;
use crate::StoreError;

/// What a sampler reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Work streams, ready accounts, schedules, dead letters (the consumer).
    Work,
    /// Feeds (the projector).
    Feed,
}

/// How often the gauges are refreshed: a scrape every 15 s sees values at most this old.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Refreshes the gauges of `side` until `shutdown`. A failed sample (Redis down) is
/// counted and logged at debug: the process' own work logs the outage already.
pub async fn run<C>(mut conn: C, keys: Keys, side: Side, shutdown: CancellationToken)
where
    C: ConnectionLike + Send + Sync,
{
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        for partition in keys.partitions() {
            let sampled = match side {
                Side::Work => sample_work(&mut conn, &keys, partition).await,
                Side::Feed => sample_feed(&mut conn, &keys, partition).await,
            };
            if let Err(error) = sampled {
                metrics::counter!(names::SAMPLE_FAILURES).increment(1);
                tracing::debug!(%error, partition, "could not sample the backlog gauges");
            }
        }
    }
}

async fn sample_work<C>(conn: &mut C, keys: &Keys, partition: u32) -> Result<(), StoreError>
where
    C: ConnectionLike + Send + Sync,
{
    let work = keys.work(partition);
    let (pending, age) = stream_backlog(conn, &work).await?;
    let ready: u64 = conn.zcard(keys.ready(partition)).await?;
    let scheduled: u64 = conn.zcard(keys.schedule(partition)).await?;
    let dead: u64 = conn.xlen(keys.dead_letters(partition)).await?;
    let label = [("partition", partition.to_string())];
    metrics::gauge!(names::WORK_PENDING, &label).set(pending as f64);
    metrics::gauge!(names::WORK_OLDEST_AGE, &label).set(age.as_secs_f64());
    metrics::gauge!(names::READY_ACCOUNTS, &label).set(ready as f64);
    metrics::gauge!(names::SCHEDULED_ACTIONS, &label).set(scheduled as f64);
    metrics::gauge!(names::DEAD_LETTERS, &label).set(dead as f64);
    Ok(())
}

async fn sample_feed<C>(conn: &mut C, keys: &Keys, partition: u32) -> Result<(), StoreError>
where
    C: ConnectionLike + Send + Sync,
{
    let (entries, age) = stream_backlog(conn, &keys.feed(partition)).await?;
    let label = [("partition", partition.to_string())];
    metrics::gauge!(names::PROJECTOR_LAG_ENTRIES, &label).set(entries as f64);
    metrics::gauge!(names::PROJECTOR_LAG_SECONDS, &label).set(age.as_secs_f64());
    Ok(())
}

/// The entries of a stream whose entries are deleted once handled (work, feed), and the
/// age of the oldest, by the clock of the Redis that minted its id.
async fn stream_backlog<C>(conn: &mut C, stream: &str) -> Result<(u64, Duration), StoreError>
where
    C: ConnectionLike + Send + Sync,
{
    let length: u64 = conn.xlen(stream).await?;
    let oldest: StreamRangeReply = conn.xrange_count(stream, "-", "+", 1).await?;
    let Some(minted) = oldest.ids.first().and_then(|entry| entry_millis(&entry.id)) else {
        return Ok((length, Duration::ZERO));
    };
    let now = crate::clock::redis_now(conn, stream).await?.millis();
    Ok((length, age(minted, now)))
}

/// The milliseconds of a stream entry id (`<ms>-<seq>`).
fn entry_millis(id: &str) -> Option<i64> {
    id.split_once('-')?.0.parse().ok()
}

/// Never negative: an id minted by a clock ahead of this one is simply new.
fn age(minted_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms.saturating_sub(minted_ms)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_id_gives_its_age() {
        assert_eq!(entry_millis("1700000000123-4"), Some(1_700_000_000_123));
        assert_eq!(entry_millis("garbage"), None);
        assert_eq!(age(1_000, 3_500), Duration::from_millis(2_500));
        assert_eq!(age(5_000, 3_500), Duration::ZERO);
    }
}
