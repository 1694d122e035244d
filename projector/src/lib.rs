//! The projector: the only writer of the views (`bulk_actions`, `bulk_action_logs`).
//!
//! It follows each partition's feed through the `projector` consumer group; a feed entry
//! only says "this action has new events", and the projector then reads the action's own
//! stream from the view's checkpoint. Views are therefore always a fold of a prefix of the
//! action's events, whatever order, repetition or loss the feed suffers.

mod project;
pub mod repartition;
pub mod retention;

use std::collections::BTreeSet;
use std::time::Duration;

use clap::Args;
use domain::ActionId;
use infra::keys::PROJECTOR_GROUP;
use infra::work::{self, ReadFrom};
use infra::{EventStore, Keys, StoreConfig};
use mongodb::bson::Document;
use mongodb::Database;
use tokio_util::sync::CancellationToken;

pub use project::{project_action, project_archived};

#[derive(Debug, Clone, Args)]
pub struct ProjectorConfig {
    #[command(flatten)]
    pub store: StoreConfig,

    /// This projector's name in the `projector` group; stable across restarts.
    #[arg(long, env = "PROJECTOR_NAME", default_value = "projector-1")]
    pub name: String,

    /// Longest wait on an empty feed before checking for shutdown (ms).
    #[arg(long, env = "PROJECTOR_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,

    /// Feed entries read at once.
    #[arg(long, env = "PROJECTOR_FEED_BATCH", default_value_t = 256)]
    pub feed_batch: usize,

    /// After projecting what the feed held, how long to let new events gather before the
    /// next read (ms). A running action then costs the store one view update per interval
    /// instead of one per batch; views lag by at most this much more.
    #[arg(long, env = "PROJECTOR_GATHER_MS", default_value_t = 100)]
    pub gather_ms: u64,

    /// Move the events of actions finished more than this many days ago from Redis to
    /// the MongoDB event archive (replay reads them there). Unset: keep them in Redis.
    #[arg(long, env = "EVENT_RETENTION_DAYS")]
    pub event_retention_days: Option<u32>,

    /// How often the retention sweep runs (seconds).
    #[arg(long, env = "RETENTION_SWEEP_SECS", default_value_t = 3600)]
    pub retention_sweep_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("store: {0}")]
    Store(#[from] infra::StoreError),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("view document: {0}")]
    Bson(#[from] mongodb::bson::ser::Error),
    #[error("events do not fold: {0}")]
    Fold(#[from] domain::FoldError),
}

impl ProjectorError {
    /// Errors that retrying cannot fix: the action's stored events themselves are wrong.
    /// One such action must not stall the projection of every other.
    fn is_about_the_data(&self) -> bool {
        matches!(
            self,
            ProjectorError::Fold(_)
                | ProjectorError::Bson(_)
                | ProjectorError::Store(infra::StoreError::Corrupt(_))
        )
    }
}

struct Projector {
    store: EventStore,
    database: Database,
    feeds: Vec<String>,
    config: ProjectorConfig,
}

async fn connect(config: &ProjectorConfig) -> Result<(EventStore, Database), ProjectorError> {
    let keys = Keys::new(&config.store.redis_key_prefix, config.store.partitions);
    let conn = infra::redis_conn::shared(&config.store.redis_url).await?;
    let database = infra::mongo::connect(&config.store.mongodb_uri, "bulk-projector").await?;
    infra::mongo::ensure_view_indexes(&database).await?;
    Ok((EventStore::new(conn, keys), database))
}

/// Follows the feeds until `shutdown` is cancelled. Waits for Redis and MongoDB at start
/// and after any outage (capped backoff with jitter); views resume from their checkpoints.
pub async fn run(
    config: ProjectorConfig,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    let Some((store, database)) =
        infra::retry::until_ok("redis and mongodb", &shutdown, || connect(&config)).await
    else {
        return Ok(());
    };
    let feeds = store
        .keys()
        .partitions()
        .map(|p| store.keys().feed(p))
        .collect();
    let projector = Projector {
        store,
        database,
        feeds,
        config,
    };
    tracing::info!(name = %projector.config.name, "projector started");
    if let Some(days) = projector.config.event_retention_days {
        let every = Duration::from_secs(projector.config.retention_sweep_secs.max(1));
        tokio::spawn(sweep_retention(
            projector.store.clone(),
            projector.database.clone(),
            days,
            every,
            shutdown.clone(),
        ));
    }
    let mut delays = infra::retry::reconnect_delays();
    while !shutdown.is_cancelled() {
        match projector.follow(&shutdown).await {
            Ok(()) => break,
            Err(error) => {
                let pause = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(%error, ?pause, "projector interrupted; resuming from its checkpoints");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    tracing::info!("projector stopped");
    Ok(())
}

impl Projector {
    async fn follow(&self, shutdown: &CancellationToken) -> Result<(), ProjectorError> {
        let block = Duration::from_millis(self.config.block_ms);
        let mut conn = infra::redis_conn::blocking(&self.config.store.redis_url, block).await?;
        work::ensure_groups(&mut conn, &self.feeds, PROJECTOR_GROUP).await?;
        let mut from = ReadFrom::OwnPending;
        while !shutdown.is_cancelled() {
            let entries = work::read_group(
                &mut conn,
                &self.feeds,
                PROJECTOR_GROUP,
                &self.config.name,
                from,
                self.config.feed_batch,
                block,
            )
            .await?;
            if entries.is_empty() {
                from = ReadFrom::New;
                continue;
            }
            let actions: BTreeSet<ActionId> = entries
                .iter()
                .filter_map(|(_, entry)| entry.get::<String>("action"))
                .filter_map(|id| ActionId::parse(&id))
                .collect();
            for action in actions {
                match project_action(&self.store, &self.database, action).await {
                    Ok(()) => {}
                    Err(error) if error.is_about_the_data() => {
                        tracing::error!(%action, %error, "cannot project this action; its view stays at its last good event");
                    }
                    Err(error) => return Err(error),
                }
            }
            for feed in &self.feeds {
                let ids: Vec<String> = entries
                    .iter()
                    .filter(|(stream, _)| stream == feed)
                    .map(|(_, entry)| entry.id.clone())
                    .collect();
                work::discard(&mut conn, feed, PROJECTOR_GROUP, &ids).await?;
            }
            if entries.len() < self.config.feed_batch && self.config.gather_ms > 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(self.config.gather_ms)) => {}
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    pub actions: usize,
}

/// Runs the retention sweep every `every` until shutdown. Several projectors may sweep at
/// once: archiving is idempotent and the forget script checks the stream first.
async fn sweep_retention(
    store: EventStore,
    database: Database,
    days: u32,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = infra::clock::now();
        let swept =
            retention::archive_finished(&store, &database, days_before(now, days), now).await;
        if let Err(error) = swept {
            tracing::warn!(%error, "retention sweep failed; trying again at the next one");
        }
    }
}

/// Moves a drained deployment's keys from its configured partition count to `to` (see
/// `repartition`).
pub async fn repartition(
    config: &ProjectorConfig,
    to: u32,
) -> Result<repartition::RepartitionReport, repartition::RepartitionError> {
    let prefix = &config.store.redis_key_prefix;
    let mut conn = infra::redis_conn::shared(&config.store.redis_url)
        .await
        .map_err(ProjectorError::from)?;
    repartition::repartition(
        &mut conn,
        &Keys::new(prefix, config.store.partitions),
        &Keys::new(prefix, to),
    )
    .await
}

/// Archives the events of actions finished more than `days` days ago (see `retention`).
pub async fn archive(
    config: &ProjectorConfig,
    days: u32,
) -> Result<retention::RetentionReport, ProjectorError> {
    let (store, database) = connect(config).await?;
    let now = infra::clock::now();
    retention::archive_finished(&store, &database, days_before(now, days), now).await
}

fn days_before(now: domain::Timestamp, days: u32) -> domain::Timestamp {
    domain::Timestamp::from_millis(now.millis() - i64::from(days) * 86_400_000).unwrap_or(now)
}

/// Drops the views and rebuilds them from every action's stream (or, for actions past
/// retention, from the event archive).
pub async fn replay(config: &ProjectorConfig) -> Result<ReplayReport, ProjectorError> {
    let (store, database) = connect(config).await?;
    for collection in [
        infra::mongo::ACTION_VIEWS,
        infra::mongo::LOG_VIEWS,
        infra::mongo::LEGACY_LOG_VIEWS,
    ] {
        database.collection::<Document>(collection).drop().await?;
    }
    infra::mongo::ensure_view_indexes(&database).await?;
    let mut actions = 0;
    for partition in store.keys().partitions() {
        for action in store.actions_in(partition).await? {
            let archived = store.meta(action).await?.is_some_and(|meta| meta.archived);
            if archived {
                project_archived(&database, action).await?;
            } else {
                project_action(&store, &database, action).await?;
            }
            actions += 1;
        }
    }
    tracing::info!(actions, "replay rebuilt the views");
    Ok(ReplayReport { actions })
}
