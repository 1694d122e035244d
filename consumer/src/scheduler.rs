//! Releases scheduled actions when their time comes, and finishes the openings of actions
//! whose api died while moving their opening events in. Every consumer process runs one;
//! the scripts are atomic, so racing schedulers release and open each action once.

use std::time::Duration;

use infra::Scheduling;
use tokio_util::sync::CancellationToken;

const RELEASES_PER_TICK: isize = 32;

pub async fn run(store: Scheduling, tick: Duration, shutdown: CancellationToken) {
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

async fn release_due(store: &Scheduling) -> Result<(), infra::StoreError> {
    let mut conn = store.connection();
    // Due by Redis' clock, not this process': a consumer whose clock runs ahead must not
    // release anything early.
    for partition in store.keys().partitions() {
        let now = infra::clock::redis_now(&mut conn, &store.keys().schedule(partition)).await?;
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
        let finished = store.finish_abandoned_openings(partition, now).await?;
        if finished > 0 {
            tracing::warn!(partition, finished, "finished openings an api left behind");
        }
    }
    Ok(())
}
