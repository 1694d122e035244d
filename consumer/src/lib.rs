//! The consumer: applies batches of bulk actions to MongoDB contacts.
//!
//! Each process runs `concurrency` workers, each a member of the `consumers` group on every
//! partition's work stream, plus a scheduler that releases scheduled actions when due. Run
//! more processes to scale out: the consumer group shares the batches among them.

mod apply;
mod deliverer;
mod dispatcher;
mod metrics;
mod reconcile;
mod scheduler;
mod worker;
mod write_reply;

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use infra::{EventStore, Keys, StoreConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use apply::{ApplyError, BatchInRedis, BatchMemory, DocumentWriter, Target};

#[derive(Debug, Clone, Args)]
pub struct ConsumerConfig {
    #[command(flatten)]
    pub store: StoreConfig,

    #[command(flatten)]
    pub metrics: infra::metrics::MetricsConfig,

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

    /// Update statements per `update` command (see `DocumentWriter`).
    #[arg(long, env = "MONGO_STATEMENTS_PER_COMMAND", default_value_t = 32)]
    pub statements_per_command: usize,

    /// How often the scheduler looks for actions whose start time has come (ms).
    #[arg(long, env = "SCHEDULER_TICK_MS", default_value_t = 250)]
    pub scheduler_tick_ms: u64,

    /// Attempts at a batch (across all consumers, crashes included) before it goes to the
    /// dead-letter stream. MongoDB being unreachable does not count as an attempt.
    #[arg(long, env = "MAX_BATCH_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_attempts: u32,

    /// Delay before the second attempt at a failed batch; it doubles, with jitter (ms).
    #[arg(long, env = "RETRY_FIRST_DELAY_MS", default_value_t = 500)]
    pub retry_first_delay_ms: u64,

    /// Longest delay between attempts at a failed batch (ms).
    #[arg(long, env = "RETRY_MAX_DELAY_MS", default_value_t = 30_000)]
    pub retry_max_delay_ms: u64,

    /// On SIGTERM, how long in-flight batches may take to finish before they are handed
    /// back to the group and the process exits (ms).
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 20_000)]
    pub shutdown_grace_ms: u64,

    /// The most the records kept for result files (failed, skipped, unprocessed) may take
    /// in Redis for all of an account's actions together; past it, later records keep
    /// nothing. Released as retention archives actions. Set the api's the same.
    #[arg(long, env = "RESULT_KEPT_MAX_BYTES_PER_ACCOUNT", default_value_t = 1 << 30)]
    pub kept_per_account: u64,

    /// Records an account may have applied per minute, across all consumers, unless the
    /// admin api set its own limit.
    #[arg(long, env = "RATE_LIMIT_RECORDS_PER_MINUTE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub records_per_minute: u32,

    /// Seconds of an account's processing pace that may go at once after a quiet spell
    /// (at least one batch always may). 0 keeps the pace smooth.
    #[arg(long, env = "RATE_LIMIT_RECORDS_BURST_SECONDS", default_value_t = 0)]
    pub records_burst_seconds: u32,

    /// Batches kept in the work streams beyond one per live worker.
    #[arg(long, env = "DISPATCH_LOOKAHEAD", default_value_t = 1)]
    pub dispatch_lookahead: u32,

    /// Longest pause between dispatch rounds (ms); rounds also run when a batch settles
    /// and when a held-back batch's time comes.
    #[arg(long, env = "DISPATCH_TICK_MS", default_value_t = 100)]
    pub dispatch_tick_ms: u64,

    /// Webhook senders in this process (each makes one attempt at a time); 0 runs no
    /// webhook delivery here at all. Every consumer process delivers, so more consumers
    /// deliver more.
    #[arg(long, env = "WEBHOOK_DELIVERY_CONCURRENCY", default_value_t = 4)]
    pub webhook_concurrency: usize,

    /// Lets webhooks reach `http` URLs and private, loopback and link-local addresses
    /// (tests and closed networks only). Set the api's the same.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub webhook_allow_private_networks: bool,

    /// The delays before each webhook attempt (ms, comma-separated, the first attempt's
    /// first), instead of the Standard Webhooks schedule (immediately, 5 s, 5 min, 30 min,
    /// 2 h, 5 h, 10 h, 14 h, 20 h, 24 h). For tests; jitter applies either way.
    #[arg(long, env = "WEBHOOK_RETRY_SCHEDULE_MS", value_parser = parse_schedule)]
    pub webhook_retry_schedule: Option<domain::webhook::RetrySchedule>,

    /// Longest webhook attempt (ms); an attempt's lease on its delivery is 10 s longer.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_timeout_ms: u64,

    /// Webhook attempts one account may have under way at once, across every consumer
    /// process (its endpoints that hang hold at most this many senders).
    #[arg(long, env = "WEBHOOK_ACCOUNT_IN_FLIGHT", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_account_in_flight: u64,

    /// How often an idle webhook sender looks for due attempts (ms).
    #[arg(long, env = "WEBHOOK_POLL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_poll_ms: u64,

    /// For benchmarks only: extra time each batch takes (ms), as a remote CRM api would
    /// add; shows how throughput scales with consumers when the store is not the limit.
    #[arg(long, env = "SIMULATED_BATCH_LATENCY_MS", default_value_t = 0)]
    pub simulated_batch_latency_ms: u64,
}

fn parse_schedule(raw: &str) -> Result<domain::webhook::RetrySchedule, String> {
    domain::webhook::RetrySchedule::parse(raw)
        .ok_or_else(|| "a comma-separated list of delays in ms, e.g. 0,100,500".to_owned())
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
    #[error("{0}")]
    Metrics(#[from] infra::metrics::MetricsError),
}

/// Runs until `shutdown` is cancelled, then lets each worker finish its batch for up to
/// `shutdown_grace_ms` and hands back what is still in flight.
///
/// Redis and MongoDB may be down at start: it waits for them (capped backoff with jitter)
/// rather than exiting.
pub async fn run(config: ConsumerConfig, shutdown: CancellationToken) -> Result<(), ConsumerError> {
    // Bound before waiting for the stores, so a taken port stops the process at once and
    // an operator can scrape a consumer that waits for an outage to end.
    let exporter = infra::metrics::bind(&config.metrics).await?;
    let sampling = exporter.is_some();
    if let Some(exporter) = exporter {
        tokio::spawn(exporter.serve(shutdown.clone()));
    }
    let Some((store, database)) = connect(&config, &shutdown).await? else {
        return Ok(());
    };
    if sampling {
        tokio::spawn(infra::metrics::backlog::run(
            store.connection(),
            store.keys().clone(),
            infra::metrics::backlog::Side::Work,
            shutdown.clone(),
        ));
    }
    let base_name = config.consumer_name();
    tracing::info!(consumer = %base_name, workers = config.concurrency, "consumer started");
    let settled = Arc::new(tokio::sync::Notify::new());
    let mut tasks = JoinSet::new();
    let in_flight = spawn_workers(&config, &store, &database, &settled, &shutdown, &mut tasks);
    let scheduling = infra::Scheduling::new(store.clone());
    let dispatcher = dispatcher::Dispatcher {
        store: scheduling.clone(),
        process_name: base_name.clone(),
        workers: config.concurrency.max(1),
        records_per_minute: config.records_per_minute,
        burst_seconds: config.records_burst_seconds,
        lookahead: config.dispatch_lookahead,
        tick: Duration::from_millis(config.dispatch_tick_ms.max(1)),
        settled,
    };
    tasks.spawn(dispatcher.run(shutdown.clone()));
    tasks.spawn(scheduler::run(
        scheduling,
        Duration::from_millis(config.scheduler_tick_ms),
        shutdown.clone(),
    ));
    deliverer(&config, &store, &database, &base_name).spawn(&mut tasks, &shutdown);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    if supervise(&mut tasks, &shutdown, grace).await == Stopped::AtTheDeadline {
        let claim_idle = Duration::from_millis(config.claim_idle_ms);
        hand_back_all(&store, &in_flight, claim_idle).await;
        tracing::warn!(consumer = %base_name, ?grace, "stopped at the shutdown deadline; in-flight batches handed back");
    }
    infra::mongo::close(&database).await;
    tracing::info!(consumer = %base_name, "consumer stopped");
    Ok(())
}

/// Redis (with the consumer groups) and MongoDB (with the contact indexes), waiting for
/// each; `None` if shut down meanwhile.
async fn connect(
    config: &ConsumerConfig,
    shutdown: &CancellationToken,
) -> Result<Option<(EventStore, mongodb::Database)>, ConsumerError> {
    let keys = Keys::new(&config.store.redis_key_prefix, config.store.partitions);
    let streams: Vec<String> = keys.partitions().map(|p| keys.work(p)).collect();
    let redis_url = config.store.redis_url.clone();
    let Some(conn) = infra::retry::until_ok("redis", shutdown, || async {
        let mut conn = infra::redis_conn::shared(&redis_url).await?;
        infra::work::ensure_groups(&mut conn, &streams, infra::keys::CONSUMER_GROUP).await?;
        Ok::<_, ConsumerError>(conn)
    })
    .await
    else {
        return Ok(None);
    };
    let store = EventStore::new(conn, keys);
    let database = infra::mongo::connect(&config.store.mongodb_uri, "bulk-consumer").await?;
    let ready = infra::retry::until_ok("mongodb", shutdown, || {
        infra::mongo::ensure_entity_indexes(&database)
    })
    .await;
    Ok(ready.map(|()| (store, database)))
}

fn deliverer(
    config: &ConsumerConfig,
    store: &EventStore,
    database: &mongodb::Database,
    name: &str,
) -> deliverer::Deliverer {
    deliverer::Deliverer {
        store: store.clone(),
        database: database.clone(),
        webhooks: infra::webhooks::Webhooks::new(store.connection(), store.keys().clone()),
        settings: Arc::new(deliverer::DeliverySettings {
            concurrency: config.webhook_concurrency,
            allow_private_networks: config.webhook_allow_private_networks,
            schedule: config.webhook_retry_schedule.clone().unwrap_or_default(),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            poll: Duration::from_millis(config.webhook_poll_ms),
            account_in_flight: usize::try_from(config.webhook_account_in_flight)
                .unwrap_or(usize::MAX),
            claim_idle: Duration::from_millis(config.claim_idle_ms),
            block: Duration::from_millis(config.block_ms),
        }),
        name: name.to_owned(),
        redis_url: config.store.redis_url.clone(),
    }
}

/// Starts the workers; returns each one's name and the batch it holds.
fn spawn_workers(
    config: &ConsumerConfig,
    store: &EventStore,
    database: &mongodb::Database,
    settled: &Arc<tokio::sync::Notify>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Vec<(String, worker::InFlight)> {
    let keys = store.keys();
    let streams: Vec<String> = keys.partitions().map(|p| keys.work(p)).collect();
    let retry = worker::RetryPolicy {
        max_attempts: config.max_batch_attempts,
        first_delay: Duration::from_millis(config.retry_first_delay_ms),
        max_delay: Duration::from_millis(config.retry_max_delay_ms),
    };
    let mut in_flight = Vec::new();
    let slot_indexes = Arc::default();
    for number in 0..config.concurrency.max(1) {
        let name = format!("{}-{number}", config.consumer_name());
        let slot = worker::InFlight::default();
        in_flight.push((name.clone(), slot.clone()));
        let worker = worker::Worker {
            name,
            store: infra::Settlement::new(store.clone()),
            writer: DocumentWriter {
                database: database.clone(),
                statements_per_command: config.statements_per_command,
                slot_indexes: Arc::clone(&slot_indexes),
            },
            streams: streams.clone(),
            redis_url: config.store.redis_url.clone(),
            block: Duration::from_millis(config.block_ms),
            claim_idle: Duration::from_millis(config.claim_idle_ms),
            retry,
            in_flight: slot,
            records_per_minute: config.records_per_minute,
            settled: settled.clone(),
            simulated_latency: Duration::from_millis(config.simulated_batch_latency_ms),
            kept_per_account: config.kept_per_account,
        };
        tasks.spawn(worker.run(shutdown.clone()));
    }
    in_flight
}

#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    /// Every task ended on its own.
    Drained,
    /// The grace after the shutdown signal ran out and the tasks were aborted.
    AtTheDeadline,
}

/// Waits for the tasks to end, aborting them once `grace` has passed after `shutdown`.
async fn supervise(
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Stopped {
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            finished = tasks.join_next() => match finished {
                None => return Stopped::Drained,
                Some(Err(panic)) => tracing::error!(error = %panic, "a consumer task panicked"),
                Some(Ok(())) => {}
            },
            _ = &mut deadline => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return Stopped::AtTheDeadline;
            }
        }
    }
}

/// Makes what the aborted workers held claimable at once: the batch each was applying and
/// whatever a read aborted mid-flight had been handed.
async fn hand_back_all(
    store: &EventStore,
    in_flight: &[(String, worker::InFlight)],
    claim_idle: Duration,
) {
    let keys = store.keys();
    let streams: Vec<String> = keys.partitions().map(|p| keys.work(p)).collect();
    for (name, slot) in in_flight {
        let item = slot.lock().ok().and_then(|mut held| held.take());
        if let Some(item) = item {
            worker::hand_back(store, &item, name, claim_idle).await;
        }
        let mut conn = store.connection();
        let group = infra::keys::CONSUMER_GROUP;
        if let Err(error) =
            infra::work::hand_back_pending(&mut conn, &streams, group, name, claim_idle).await
        {
            tracing::warn!(%error, worker = %name, "could not hand back pending work; it will be claimed when idle");
        }
    }
}
