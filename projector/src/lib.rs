//! The projector: the only writer of the views (`bulk_actions`, `bulk_action_log_buckets`,
//! `bulk_action_result_buckets`).
//!
//! It follows each partition's feed through the `projector` consumer group; a feed entry
//! only says "this action has new events", and the projector then reads the action's own
//! stream from the view's checkpoint. Views are therefore always a fold of a prefix of the
//! action's events, whatever order, repetition or loss the feed suffers.

mod follow;
mod project;
pub mod repartition;
pub mod retention;

use std::time::Duration;

use clap::Args;
use domain::{ActionId, ProjectionError};
use infra::{EventStore, Keys, Projection, StoreConfig};
use mongodb::bson::Document;
use mongodb::Database;
use tokio_util::sync::CancellationToken;

pub use project::{project_action, project_archived};

#[derive(Debug, Clone, Args)]
pub struct ProjectorConfig {
    #[command(flatten)]
    pub store: StoreConfig,

    /// `projector run` only.
    #[command(flatten)]
    pub metrics: infra::metrics::MetricsConfig,

    /// This projector's name in the `projector` group; stable across restarts.
    #[arg(long, env = "PROJECTOR_NAME", default_value = "projector-1")]
    pub name: String,

    /// Longest wait on an empty feed before checking for shutdown (ms).
    #[arg(long, env = "PROJECTOR_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,

    /// How long a feed entry read by a projector stays unacknowledged before another
    /// projector takes it over: its reader died, perhaps to be replaced under another
    /// name (ms). The same setting as the consumers'.
    #[arg(long, env = "CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,

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
    #[error("{0}")]
    Metrics(#[from] infra::metrics::MetricsError),
}

impl ProjectorError {
    /// Errors that retrying will not cure: the store refuses this action's views, or its
    /// stored events themselves are wrong. One such action must not stall every other.
    fn is_permanent(&self) -> bool {
        match self {
            ProjectorError::Fold(_) | ProjectorError::Bson(_) => true,
            ProjectorError::Store(infra::StoreError::Corrupt(_)) => true,
            ProjectorError::Mongo(error) => !infra::mongo::is_outage(error),
            ProjectorError::Redis(_) | ProjectorError::Store(_) => false,
            ProjectorError::Metrics(_) => false,
        }
    }

    /// What a view shows about a permanent error at event `seq`.
    fn describe(&self, seq: u64, at: domain::Timestamp) -> ProjectionError {
        let code = match self {
            ProjectorError::Mongo(_) => "store_refused",
            ProjectorError::Fold(_) => "events_do_not_fold",
            ProjectorError::Bson(_) => "view_not_serializable",
            ProjectorError::Store(_) | ProjectorError::Redis(_) => "events_unreadable",
            ProjectorError::Metrics(_) => "metrics",
        };
        let message = match self {
            ProjectorError::Mongo(error) => infra::mongo::server_message(error),
            other => other.to_string(),
        };
        ProjectionError::new(code, &message, at, seq)
    }
}

async fn connect(config: &ProjectorConfig) -> Result<(Projection, Database), ProjectorError> {
    let keys = Keys::new(&config.store.redis_key_prefix, config.store.partitions);
    let conn = infra::redis_conn::shared(&config.store.redis_url).await?;
    let database = infra::mongo::connect(&config.store.mongodb_uri, "bulk-projector").await?;
    infra::mongo::ensure_view_indexes(&database).await?;
    Ok((Projection::new(EventStore::new(conn, keys)), database))
}

/// Follows the feeds until `shutdown` is cancelled. Waits for Redis and MongoDB at start
/// and after any outage (capped backoff with jitter); views resume from their checkpoints.
pub async fn run(
    config: ProjectorConfig,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    // Bound before waiting for the stores: a taken port stops the process at once.
    let exporter = infra::metrics::bind(&config.metrics).await?;
    let sampling = exporter.is_some();
    if let Some(exporter) = exporter {
        tokio::spawn(exporter.serve(shutdown.clone()));
    }
    let Some((store, database)) =
        infra::retry::until_ok("redis and mongodb", &shutdown, || connect(&config)).await
    else {
        return Ok(());
    };
    if sampling {
        tokio::spawn(infra::metrics::backlog::run(
            store.connection(),
            store.keys().clone(),
            infra::metrics::backlog::Side::Feed,
            shutdown.clone(),
        ));
    }
    let feeds = store
        .keys()
        .partitions()
        .map(|p| store.keys().feed(p))
        .collect();
    let projector = follow::Projector {
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
    infra::mongo::close(&projector.database).await;
    tracing::info!("projector stopped");
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub actions: usize,
    /// Actions whose views the store still refuses (see `follow::quarantine`).
    pub quarantined: usize,
}

/// Runs the retention sweep every `every` until shutdown. Several projectors may sweep at
/// once: archiving is idempotent and the forget script checks the stream first.
async fn sweep_retention(
    store: Projection,
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
/// retention, from the event archive). Quarantined actions are tried again: those that now
/// project leave the quarantine, those that still fail are quarantined again and the
/// replay goes on.
pub async fn replay(config: &ProjectorConfig) -> Result<ReplayReport, ProjectorError> {
    let (store, database) = connect(config).await?;
    for collection in [
        infra::mongo::ACTION_VIEWS,
        infra::mongo::LOG_VIEWS,
        infra::mongo::RESULT_VIEWS,
        infra::mongo::LEGACY_LOG_VIEWS,
    ] {
        database.collection::<Document>(collection).drop().await?;
    }
    infra::mongo::ensure_view_indexes(&database).await?;
    let mut report = ReplayReport::default();
    for partition in store.keys().partitions() {
        // Every action is judged again; whatever still fails is quarantined again.
        store.clear_quarantine(partition).await?;
        for action in store.actions_in(partition).await? {
            let archived = store.meta(action).await?.is_some_and(|meta| meta.archived);
            let refused = if archived {
                project_archived(&database, action).await?
            } else {
                project_action(&store, &database, action).await?
            };
            if let Some(error) = refused {
                follow::quarantine(&store, &database, action, &error).await?;
                report.quarantined += 1;
            }
            report.actions += 1;
        }
    }
    tracing::info!(
        actions = report.actions,
        quarantined = report.quarantined,
        "replay rebuilt the views"
    );
    Ok(report)
}

/// Every quarantined action with the reason, partition by partition.
pub async fn quarantined(
    config: &ProjectorConfig,
) -> Result<Vec<(ActionId, ProjectionError)>, ProjectorError> {
    let keys = Keys::new(&config.store.redis_key_prefix, config.store.partitions);
    let conn = infra::redis_conn::shared(&config.store.redis_url).await?;
    let store = Projection::new(EventStore::new(conn, keys));
    let mut all = Vec::new();
    for partition in store.keys().partitions() {
        all.extend(store.quarantined_in(partition).await?);
    }
    Ok(all)
}
