//! Releases scheduled actions when their time comes. Every consumer process runs one; the
//! release script's `ZREM` decides which one wins for each action.

use std::time::Duration;

use infra::EventStore;
use tokio_util::sync::CancellationToken;

const RELEASES_PER_TICK: isize = 32;

pub async fn run(store: EventStore, tick: Duration, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(error) = release_due(&store).await {
            tracing::warn!(%error, "scheduler tick failed; retrying next tick");
        }
    }
}

async fn release_due(store: &EventStore) -> Result<(), infra::StoreError> {
    let now = infra::clock::now();
    let mut conn = store.connection();
    for partition in store.keys().partitions() {
        let due = infra::work::due_actions(
            &mut conn,
            store.keys(),
            partition,
            now.millis(),
            RELEASES_PER_TICK,
        )
        .await?;
        for action in due {
            if store.release(action, now).await? {
                tracing::info!(%action, "scheduled action released");
            }
        }
    }
    Ok(())
}
