use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use api::{ApiConfig, AppState};
use consumer::ConsumerConfig;
use infra::StoreConfig;
use projector::ProjectorConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::ApiClient;
use crate::services::Services;

#[derive(Debug, Clone)]
pub struct AppOptions {
    pub consumers: usize,
    /// 0 runs no projector: reads fold the events themselves.
    pub projectors: usize,
    /// A Redis other than the services' own, e.g. a `RedisCluster`'s URL.
    pub redis_url: Option<String>,
    pub partitions: u32,
    pub batch_size: u32,
    pub max_records_per_action: usize,
    pub max_batches_per_action: u32,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub max_record_bytes: usize,
    pub max_batch_attempts: u32,
    /// How long consumers and the projector leave another's unacknowledged entries alone.
    pub claim_idle_ms: u64,
    /// The processing limit of every account (default: high enough never to bind).
    pub records_per_minute: u32,
    /// The request limit of every account (default: high enough never to bind).
    pub requests_per_minute: u32,
    pub admin_token: Option<String>,
    /// Live event streams an account may hold open on the api.
    pub max_streams_per_account: usize,
    /// How long an event stream stays open before the api ends it.
    pub max_stream_seconds: u64,
    /// What an account's kept records may take (api and consumers).
    pub kept_per_account: u64,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            consumers: 1,
            projectors: 1,
            redis_url: None,
            partitions: 4,
            batch_size: 100,
            max_records_per_action: 100_000,
            max_batches_per_action: 10_000,
            max_body_bytes: 16 * 1024 * 1024,
            max_upload_bytes: 256 * 1024 * 1024,
            max_record_bytes: 64 * 1024,
            max_batch_attempts: 8,
            claim_idle_ms: 5_000,
            records_per_minute: 100_000_000,
            requests_per_minute: 1_000_000,
            admin_token: Some(crate::client::TEST_ADMIN_TOKEN.to_owned()),
            max_streams_per_account: 100,
            max_stream_seconds: 3600,
            kept_per_account: 1 << 30,
        }
    }
}

struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

/// The api, consumers and projector running in this process over real connections to a
/// private set of services.
pub struct TestApp {
    pub services: Services,
    /// The cluster the app runs on when `BULK_TEST_REDIS=cluster`.
    pub cluster: Option<crate::RedisCluster>,
    pub client: ApiClient,
    store: StoreConfig,
    options: AppOptions,
    api: Running,
    consumers: Vec<Running>,
    projector: Option<Running>,
}

impl TestApp {
    pub async fn spawn(options: AppOptions) -> Result<Self> {
        init_logs();
        let services = tokio::task::spawn_blocking(Services::start).await??;
        // BULK_TEST_REDIS=cluster runs the app on a Redis Cluster of its own instead.
        let cluster = if crate::on_cluster() && options.redis_url.is_none() {
            Some(tokio::task::spawn_blocking(crate::RedisCluster::start).await??)
        } else {
            None
        };
        let store = StoreConfig {
            mongodb_uri: services.mongodb_uri.clone(),
            redis_url: options
                .redis_url
                .clone()
                .or_else(|| cluster.as_ref().map(crate::RedisCluster::url))
                .unwrap_or_else(|| services.redis_url.clone()),
            redis_key_prefix: "test".into(),
            partitions: options.partitions,
        };
        let api_config = ApiConfig {
            store: store.clone(),
            metrics: infra::metrics::MetricsConfig::off(),
            host: "127.0.0.1".into(),
            port: 0,
            batch_size: options.batch_size,
            max_body_bytes: options.max_body_bytes,
            max_upload_bytes: options.max_upload_bytes,
            max_record_bytes: options.max_record_bytes,
            max_records_per_action: options.max_records_per_action,
            max_batches_per_action: options.max_batches_per_action,
            idempotency_ttl_secs: 3600,
            schedule_horizon_days: 30,
            shutdown_grace_ms: 5_000,
            requests_per_minute: options.requests_per_minute,
            request_burst_seconds: 6,
            records_per_minute: options.records_per_minute,
            admin_token: options.admin_token.clone(),
            max_streams_per_account: options.max_streams_per_account,
            max_stream_seconds: options.max_stream_seconds,
            kept_per_account: options.kept_per_account,
            result_exports_per_account: 4,
            // As in production: webhooks to private addresses are refused.
            webhook_allow_private_networks: false,
        };
        let state = AppState::connect(&api_config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            if let Err(error) = api::serve(listener, state, token, Duration::from_secs(5)).await {
                eprintln!("api stopped with error: {error}");
            }
        });
        let database = infra::mongo::connect(&services.mongodb_uri, "bulk-tests").await?;
        let mut app = TestApp {
            services,
            cluster,
            client: match &options.admin_token {
                Some(token) => ApiClient::new(base_url, database).with_admin(token),
                None => ApiClient::new(base_url, database),
            },
            store,
            options: options.clone(),
            api: Running { shutdown, handle },
            consumers: Vec::new(),
            projector: None,
        };
        for _ in 0..options.consumers {
            app.start_consumer();
        }
        if options.projectors > 0 {
            app.start_projector();
        }
        app.wait_for_groups(&options).await?;
        Ok(app)
    }

    /// Waits until the projector (and the consumers, if any) have created their consumer
    /// groups, so that tests see a settled key space.
    async fn wait_for_groups(&self, options: &AppOptions) -> Result<()> {
        let keys = infra::Keys::new(&self.store.redis_key_prefix, self.store.partitions);
        let mut expected: Vec<String> = Vec::new();
        if options.projectors > 0 {
            expected.extend(keys.partitions().map(|p| keys.feed(p)));
        }
        if options.consumers > 0 {
            expected.extend(keys.partitions().map(|p| keys.work(p)));
        }
        let mut conn = infra::redis_conn::shared(&self.store.redis_url).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut missing = 0;
            for key in &expected {
                let exists: bool = redis::AsyncCommands::exists(&mut conn, key).await?;
                missing += usize::from(!exists);
            }
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{missing} consumer groups were not created within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn consumer_config(&self, name: String) -> ConsumerConfig {
        ConsumerConfig {
            store: self.store.clone(),
            metrics: infra::metrics::MetricsConfig::off(),
            concurrency: 2,
            name: Some(name),
            block_ms: 200,
            claim_idle_ms: self.options.claim_idle_ms,
            statements_per_command: 32,
            scheduler_tick_ms: 50,
            max_batch_attempts: self.options.max_batch_attempts,
            retry_first_delay_ms: 50,
            retry_max_delay_ms: 500,
            shutdown_grace_ms: 5_000,
            records_per_minute: self.options.records_per_minute,
            kept_per_account: self.options.kept_per_account,
            records_burst_seconds: 0,
            dispatch_lookahead: 1,
            dispatch_tick_ms: 50,
            simulated_batch_latency_ms: 0,
            // One sender is plenty for the in-process tests; webhooks' own tests run the
            // binaries (tests/tests/webhooks.rs).
            webhook_concurrency: 1,
            webhook_allow_private_networks: true,
            webhook_retry_schedule: None,
            webhook_timeout_ms: 15_000,
            webhook_poll_ms: 250,
            webhook_account_in_flight: 2,
        }
    }

    pub fn start_consumer(&mut self) {
        let config = self.consumer_config(format!("test-consumer-{}", self.consumers.len()));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            if let Err(error) = consumer::run(config, token).await {
                eprintln!("consumer stopped with error: {error}");
            }
        });
        self.consumers.push(Running { shutdown, handle });
    }

    pub async fn stop_consumers(&mut self) {
        for running in self.consumers.drain(..) {
            running.shutdown.cancel();
            let _ = running.handle.await;
        }
    }

    pub fn projector_config(&self) -> ProjectorConfig {
        ProjectorConfig {
            store: self.store.clone(),
            metrics: infra::metrics::MetricsConfig::off(),
            name: "test-projector".into(),
            block_ms: 200,
            claim_idle_ms: self.options.claim_idle_ms,
            feed_batch: 256,
            gather_ms: 20,
            event_retention_days: None,
            retention_sweep_secs: 3600,
        }
    }

    pub fn start_projector(&mut self) {
        let config = self.projector_config();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            if let Err(error) = projector::run(config, token).await {
                eprintln!("projector stopped with error: {error}");
            }
        });
        self.projector = Some(Running { shutdown, handle });
    }

    pub async fn stop_projector(&mut self) {
        if let Some(running) = self.projector.take() {
            running.shutdown.cancel();
            let _ = running.handle.await;
        }
    }

    pub fn options(&self) -> &AppOptions {
        &self.options
    }

    /// The Redis the app runs on: the services' own, or a cluster.
    pub fn redis_url(&self) -> &str {
        &self.store.redis_url
    }

    /// The Redis key layout the processes use.
    pub fn keys(&self) -> infra::Keys {
        infra::Keys::new(&self.store.redis_key_prefix, self.store.partitions)
    }

    pub async fn replay(&self) -> Result<projector::ReplayReport> {
        Ok(projector::replay(&self.projector_config()).await?)
    }
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.api.shutdown.cancel();
        for running in &self.consumers {
            running.shutdown.cancel();
        }
        if let Some(running) = &self.projector {
            running.shutdown.cancel();
        }
    }
}

fn init_logs() {
    if std::env::var("RUST_LOG").is_ok() {
        infra::telemetry::init("tests");
    }
}
