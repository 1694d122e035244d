//! Waiting on a dependency that is down: capped exponential backoff with jitter.
//!
//! Every process uses this at start (Redis or MongoDB may come up after it) and around the
//! loops that lose their connection at run time, so an outage ends in recovery without an
//! operator, and a fleet of processes does not hammer a recovering server in lockstep.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Delays that double from `first` up to `cap`, each with random jitter, forever.
pub fn delays(first: Duration, cap: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(cap)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The delays for reconnecting to Redis or MongoDB.
pub fn reconnect_delays() -> impl Iterator<Item = Duration> {
    delays(Duration::from_millis(100), Duration::from_secs(5))
}

/// Runs `attempt` until it succeeds; `None` if `shutdown` fires first.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = reconnect_delays();
    loop {
        let error = tokio::select! {
            _ = shutdown.cancelled() => return None,
            result = attempt() => match result {
                Ok(value) => return Some(value),
                Err(error) => error,
            },
        };
        let pause = delays.next().unwrap_or(Duration::from_secs(5));
        tracing::warn!(%error, ?pause, "{what} is not available yet; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let first: Vec<Duration> = delays(Duration::from_millis(10), Duration::from_millis(80))
            .take(12)
            .collect();
        assert_eq!(first.len(), 12);
        // Jitter adds at most one more delay's worth on top of the capped base.
        assert!(first.iter().all(|d| *d <= Duration::from_millis(160)));
        assert!(first[11] >= Duration::from_millis(80));
    }
}
