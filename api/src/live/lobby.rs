//! New actions of a partition, noticed once per api process for every account stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use domain::{AccountId, ActionId};
use tokio::sync::broadcast;

use super::{LiveHub, LINGER};

/// How often the partition's newest actions are read: a new action reaches an account
/// stream within this and a watcher's first read.
const POLL: Duration = Duration::from_millis(400);
/// Actions are scored by the accepting api's clock, which may be behind this one's; each
/// read looks this far back and skips the ones already announced.
const LOOK_BACK_MS: i64 = 30_000;
/// Most actions read per poll: a partition cannot be sent more than this many new actions
/// per look-back by any tenant.
const READ_LIMIT: usize = 512;

pub(super) async fn run(
    hub: LiveHub,
    partition: u32,
    notices: broadcast::Sender<(ActionId, AccountId)>,
) {
    let shutdown = hub.shutdown();
    let started_ms = infra::clock::now().millis();
    // Announced ids, with the score they were read at, dropped once out of the look-back.
    let mut announced: HashMap<ActionId, i64> = HashMap::new();
    let mut first = true;
    let mut unwatched_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => return,
        }
        if notices.receiver_count() == 0 {
            let since = *unwatched_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= LINGER && hub.release_lobby_if_unwatched(partition, &notices) {
                return;
            }
            continue;
        }
        unwatched_since = None;
        let now_ms = infra::clock::now().millis();
        let since_ms = now_ms - LOOK_BACK_MS;
        let recent = match hub
            .store()
            .recent_actions(partition, since_ms, READ_LIMIT)
            .await
        {
            Ok(recent) => recent,
            Err(error) => {
                tracing::warn!(partition, %error, "cannot read a partition's new actions");
                continue;
            }
        };
        for (action, account) in recent {
            if announced.insert(action, now_ms).is_some() {
                continue;
            }
            // What existed before the lobby started is every stream's own starting set.
            let created_ms = i64::try_from(action.ulid().timestamp_ms()).unwrap_or(i64::MAX);
            if first && created_ms < started_ms {
                continue;
            }
            let _ = notices.send((action, account));
        }
        first = false;
        announced.retain(|_, read_at| *read_at >= since_ms);
    }
}
