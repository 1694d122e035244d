//! The consumer: applies batches of bulk actions to MongoDB contacts.
//!
//! Each process runs `concurrency` workers, each a member of the `consumers` group on every
//! partition's work stream, plus a scheduler that releases scheduled actions when due. Run
//! more processes to scale out: the consumer group shares the batches among them.

mod apply;
mod scheduler;
mod worker;

use std::time::Duration;

use clap::Args;
use infra::{EventStore, Keys, StoreConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use apply::{ApplyError, ContactWriter};

#[derive(Debug, Clone, Args)]
pub struct ConsumerConfig {
    #[command(flatten)]
    pub store: StoreConfig,

    /// Batches this process applies at the same time.
    #[arg(long, env = "CONSUMER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    /// This process' name in the consumer group; must be unique among live consumers and
    /// stable across restarts of the same one (so it finds its own pending work).
    #[arg(long, env = "CONSUMER_NAME")]
    pub name: Option<String>,

    /// Longest wait on an empty work stream before checking for shutdown (ms).
    #[arg(long, env = "CONSUMER_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,

    /// Work pending this long with a consumer is presumed abandoned and claimed (ms).
    #[arg(long, env = "CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,

    /// Update statements per `update` command (see `ContactWriter`).
    #[arg(long, env = "MONGO_STATEMENTS_PER_COMMAND", default_value_t = 32)]
    pub statements_per_command: usize,

    /// How often the scheduler looks for actions whose start time has come (ms).
    #[arg(long, env = "SCHEDULER_TICK_MS", default_value_t = 250)]
    pub scheduler_tick_ms: u64,
}

impl ConsumerConfig {
    pub fn consumer_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "consumer".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("store: {0}")]
    Store(#[from] infra::StoreError),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
}

/// Runs until `shutdown` is cancelled, then lets each worker finish its batch.
pub async fn run(config: ConsumerConfig, shutdown: CancellationToken) -> Result<(), ConsumerError> {
    let keys = Keys::new(&config.store.redis_key_prefix, config.store.partitions);
    let conn = infra::redis_conn::shared(&config.store.redis_url).await?;
    let store = EventStore::new(conn.clone(), keys.clone());
    let database = infra::mongo::connect(&config.store.mongodb_uri, "bulk-consumer").await?;
    infra::mongo::ensure_contact_indexes(&database).await?;
    let streams: Vec<String> = keys.partitions().map(|p| keys.work(p)).collect();
    infra::work::ensure_groups(&mut conn.clone(), &streams, infra::keys::CONSUMER_GROUP).await?;

    let base_name = config.consumer_name();
    tracing::info!(consumer = %base_name, workers = config.concurrency, "consumer started");
    let mut tasks = JoinSet::new();
    for number in 0..config.concurrency.max(1) {
        let worker = worker::Worker {
            name: format!("{base_name}-{number}"),
            store: store.clone(),
            writer: ContactWriter {
                database: database.clone(),
                statements_per_command: config.statements_per_command,
            },
            streams: streams.clone(),
            redis_url: config.store.redis_url.clone(),
            block: Duration::from_millis(config.block_ms),
            claim_idle: Duration::from_millis(config.claim_idle_ms),
        };
        tasks.spawn(worker.run(shutdown.clone()));
    }
    tasks.spawn(scheduler::run(
        store.clone(),
        Duration::from_millis(config.scheduler_tick_ms),
        shutdown.clone(),
    ));
    while let Some(finished) = tasks.join_next().await {
        if let Err(panic) = finished {
            tracing::error!(error = %panic, "a consumer task panicked");
        }
    }
    tracing::info!(consumer = %base_name, "consumer stopped");
    Ok(())
}
