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
/// read looks this far back and skips the ones already announced. An api whose clock is
/// further behind than this has its new actions reach account streams late (at the next
/// reconnect); docs/operations.md asks for synchronised clocks.
const LOOK_BACK_MS: i64 = 30_000;
/// Most actions read per poll: past it, the newest are announced and the rest are found
/// by the streams that lag (they read their account's recent actions again).
pub const READ_LIMIT: usize = 512;

/// The start of the look-back window now.
pub fn since_ms() -> i64 {
    infra::clock::now().millis() - LOOK_BACK_MS
}

pub(super) async fn run(
    hub: LiveHub,
    partition: u32,
    notices: broadcast::Sender<(ActionId, AccountId)>,
) {
    let shutdown = hub.shutdown();
    // Announced ids, with the time they were read, dropped once out of the look-back. An
    // action announced twice (after this map forgot it) is followed once: streams skip
    // the actions they follow.
    let mut announced: HashMap<ActionId, i64> = HashMap::new();
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
        let since = since_ms();
        let unseen: Vec<ActionId> = match hub
            .store()
            .recent_action_ids(partition, since, READ_LIMIT)
            .await
        {
            Ok(ids) => ids
                .into_iter()
                .filter(|id| !announced.contains_key(id))
                .collect(),
            Err(error) => {
                tracing::warn!(partition, %error, "cannot read a partition's new actions");
                continue;
            }
        };
        let owned = match hub.store().accounts_of(&unseen).await {
            Ok(owned) => owned,
            Err(error) => {
                tracing::warn!(partition, %error, "cannot read the accounts of new actions");
                continue;
            }
        };
        let now = infra::clock::now().millis();
        // Oldest first, so that a stream at its limit of actions follows the older ones.
        for (action, account) in owned.into_iter().rev() {
            announced.insert(action, now);
            let _ = notices.send((action, account));
        }
        announced.retain(|_, read_at| *read_at >= since);
    }
}
