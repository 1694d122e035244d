//! The HTTP api: accepts bulk actions and serves their views.
//!
//! It writes only to Redis: an action's opening events and staged batches, the events of
//! cancel, pause, resume and PATCH (each through an event store script), request budgets,
//! API keys and limit overrides. It never writes contacts or views.

mod auth;
mod error;
mod extract;
mod http_metrics;
mod idempotency;
mod ingest;
mod live;
mod openapi;
mod query;
mod rate_limit;
mod read_model;
mod request_id;
mod results;
mod routes;
mod slots;
mod submission;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clap::Args;
use infra::{AccountAdmin, EventStore, Keys, StoreConfig, Submissions};
use mongodb::Database;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorCode};
pub use openapi::ApiDoc;

#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    #[command(flatten)]
    pub store: StoreConfig,

    /// `GET /metrics` on a port of its own, off the public one.
    #[command(flatten)]
    pub metrics: infra::metrics::MetricsConfig,

    /// Interface to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on (0: any free port).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Records per batch: the unit of work, retry and progress.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Largest accepted request body, in bytes. A JSON body is spooled to a temporary file
    /// (`TMPDIR`) and read a record at a time.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest accepted NDJSON or CSV upload, in bytes. Streamed, never held whole.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Longest NDJSON line, CSV row or JSON record, in bytes. A longer NDJSON line or JSON
    /// record fails its own record (`record_too_large`); a longer CSV row refuses the
    /// upload. Also the longest value of a JSON body's setting.
    #[arg(long, env = "MAX_RECORD_BYTES", default_value_t = 64 * 1024)]
    pub max_record_bytes: usize,

    /// Most records one action may hold.
    #[arg(long, env = "MAX_RECORDS_PER_ACTION", default_value_t = 1_000_000)]
    pub max_records_per_action: usize,

    /// Most batches one action may be cut into. Only a drip of tiny batches comes near it
    /// (1,000,000 records need `pacing.batchSize` >= 100); it bounds the events, work
    /// entries and cancel settlements one action can cost
    /// (docs/decisions/0021-a-cap-on-batches-not-a-floor-on-batch-size.md).
    #[arg(long, env = "MAX_BATCHES_PER_ACTION", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batches_per_action: u32,

    /// How far ahead `scheduledFor` may be (days).
    #[arg(long, env = "SCHEDULE_HORIZON_DAYS", default_value_t = 365)]
    pub schedule_horizon_days: u32,

    /// How long an `Idempotency-Key` is remembered (seconds).
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 24 * 3600)]
    pub idempotency_ttl_secs: u64,

    /// On SIGTERM, how long in-flight requests may take before the process exits anyway (ms).
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 20_000)]
    pub shutdown_grace_ms: u64,

    /// Requests an account may make per minute, across all api instances, unless the admin
    /// api set its own limit.
    #[arg(long, env = "RATE_LIMIT_REQUESTS_PER_MINUTE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests_per_minute: u32,

    /// Seconds of an account's request pace that may come at once after a quiet spell.
    /// Any 60 s window admits at most the limit plus this burst.
    #[arg(long, env = "RATE_LIMIT_REQUEST_BURST_SECONDS", default_value_t = 6)]
    pub request_burst_seconds: u32,

    /// The consumers' default processing limit, reported by the admin api (set it to the
    /// same value as the consumers').
    #[arg(long, env = "RATE_LIMIT_RECORDS_PER_MINUTE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub records_per_minute: u32,

    /// Live event streams (`/bulk-actions/.../events`) one account may hold open on one
    /// api process at once.
    #[arg(long, env = "SSE_MAX_STREAMS_PER_ACCOUNT", default_value_t = 100)]
    pub max_streams_per_account: usize,

    /// Longest a live event stream stays open (seconds); the client then resumes with
    /// `Last-Event-ID`, nothing lost.
    #[arg(long, env = "SSE_MAX_STREAM_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stream_seconds: u64,

    /// The most the records kept for result files may take in Redis for all of an
    /// account's actions together (set the consumers' the same); past it, refused and
    /// skipped records keep nothing.
    #[arg(long, env = "RESULT_KEPT_MAX_BYTES_PER_ACCOUNT", default_value_t = 1 << 30)]
    pub kept_per_account: u64,

    /// Result files (`/bulk-actions/{id}/results`) one account may download at once from
    /// one api process: each holds a database cursor while it lasts.
    #[arg(long, env = "RESULT_EXPORTS_PER_ACCOUNT", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub result_exports_per_account: u32,

    /// Lets webhook endpoints be `http` URLs and private, loopback and link-local
    /// addresses (tests and closed networks only). Set the consumers' the same.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub webhook_allow_private_networks: bool,

    /// Bearer token of the `/admin` endpoints; unset, they are disabled.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

pub struct Settings {
    pub batch_size: usize,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub max_record_bytes: usize,
    pub max_records_per_action: usize,
    pub max_batches_per_action: u32,
    pub idempotency_ttl_secs: u64,
    pub schedule_horizon_days: u32,
    pub requests_per_minute: u32,
    pub request_burst_seconds: u32,
    pub records_per_minute: u32,
    pub webhook_allow_private_networks: bool,
    pub admin_token: Option<String>,
    pub kept_per_account: u64,
}

#[derive(Clone)]
pub struct AppState {
    /// Reads, and the api's writes to actions.
    pub store: Submissions,
    /// The admin api's writes.
    pub admin: AccountAdmin,
    pub database: Database,
    /// The account's webhook endpoints and their deliveries.
    pub webhooks: infra::webhooks::Webhooks,
    pub config: Arc<Settings>,
    /// Monotonic within this process, so that actions accepted in the same millisecond
    /// still list in the order they were accepted.
    pub ids: Arc<std::sync::Mutex<ulid::Generator>>,
    /// Live progress: the actions this process' event streams watch.
    pub live: live::LiveHub,
    /// Result files being downloaded, per account.
    pub exports: slots::AccountSlots,
}

impl AppState {
    /// A fresh action id in `account`'s partition, where its queue and budgets live.
    /// Consecutive ids of one millisecond differ by one in their random part, so this
    /// takes at most one id per partition.
    pub fn next_action_id(&self, account: &domain::AccountId) -> domain::ActionId {
        let keys = self.store.keys();
        let home = keys.account_partition(account);
        loop {
            let id = self.generate_id();
            if keys.partition_of(id) == home {
                return id;
            }
        }
    }

    fn generate_id(&self) -> domain::ActionId {
        let generated = self
            .ids
            .lock()
            .ok()
            .and_then(|mut generator| generator.generate().ok());
        // The generator only fails when a millisecond's random space is exhausted.
        match generated {
            Some(id) => domain::ActionId::from_ulid(id),
            None => domain::ActionId::from_ulid(ulid::Ulid::new()),
        }
    }
}

impl AppState {
    pub async fn connect(config: &ApiConfig) -> Result<Self, ApiStartError> {
        let keys = Keys::new(&config.store.redis_key_prefix, config.store.partitions);
        let conn = infra::redis_conn::shared(&config.store.redis_url).await?;
        let database = infra::mongo::connect(&config.store.mongodb_uri, "bulk-api").await?;
        let live = live::LiveHub::new(
            Submissions::new(EventStore::new(conn.clone(), keys.clone())),
            database.clone(),
            config.max_streams_per_account.max(1),
            Duration::from_secs(config.max_stream_seconds.max(1)),
            CancellationToken::new(),
        );
        Ok(Self {
            live,
            exports: slots::AccountSlots::new(config.result_exports_per_account as usize),
            store: Submissions::new(EventStore::new(conn.clone(), keys.clone())),
            admin: AccountAdmin::new(EventStore::new(conn.clone(), keys.clone())),
            webhooks: infra::webhooks::Webhooks::new(conn, keys),
            database,
            config: Arc::new(Settings {
                batch_size: config.batch_size as usize,
                max_body_bytes: config.max_body_bytes,
                max_upload_bytes: config.max_upload_bytes,
                max_record_bytes: config.max_record_bytes.max(1),
                max_records_per_action: config.max_records_per_action,
                max_batches_per_action: config.max_batches_per_action,
                idempotency_ttl_secs: config.idempotency_ttl_secs.max(1),
                schedule_horizon_days: config.schedule_horizon_days,
                requests_per_minute: config.requests_per_minute,
                request_burst_seconds: config.request_burst_seconds,
                records_per_minute: config.records_per_minute,
                webhook_allow_private_networks: config.webhook_allow_private_networks,
                admin_token: config.admin_token.clone().filter(|token| !token.is_empty()),
                kept_per_account: config.kept_per_account,
            }),
            ids: Arc::new(std::sync::Mutex::new(ulid::Generator::new())),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Metrics(#[from] infra::metrics::MetricsError),
}

pub fn router(state: AppState) -> Router {
    use axum::routing::post;
    use routes::{
        actions, admin, control, dashboard, events, fields, health, logs, results, retry, submit,
        webhooks,
    };
    let max_body = state.config.max_body_bytes;
    // Every /bulk-actions, /fields and /webhooks route is behind an API key, checked
    // before the handler reads anything of the request.
    let bulk_actions = Router::new()
        .route(
            "/bulk-actions",
            get(actions::list_actions).post(submit::submit),
        )
        .route(
            "/bulk-actions/{action_id}",
            get(actions::get_action).patch(control::amend),
        )
        .route("/bulk-actions/{action_id}/cancel", post(control::cancel))
        .route("/bulk-actions/{action_id}/pause", post(control::pause))
        .route("/bulk-actions/{action_id}/resume", post(control::resume))
        .route("/bulk-actions/events", get(events::account_events))
        .route(
            "/bulk-actions/{action_id}/events",
            get(events::action_events),
        )
        .route("/bulk-actions/{action_id}/stats", get(actions::get_stats))
        .route("/bulk-actions/{action_id}/logs", get(logs::get_logs))
        .route(
            "/bulk-actions/{action_id}/results",
            get(results::get_results),
        )
        .route("/bulk-actions/{action_id}/retry", post(retry::retry))
        .route(
            "/fields/{entity_type}",
            get(fields::get_fields).put(fields::put_fields),
        )
        .route(
            "/webhooks",
            get(webhooks::list_webhooks).post(webhooks::create_webhook),
        )
        .route(
            "/webhooks/{webhook_id}",
            get(webhooks::get_webhook).delete(webhooks::delete_webhook),
        )
        .route(
            "/webhooks/{webhook_id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route(
            "/webhooks/{webhook_id}/deliveries",
            get(webhooks::list_deliveries),
        )
        .route(
            "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            post(webhooks::redeliver),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .merge(bulk_actions)
        .route(
            "/admin/accounts/{account_id}/limits",
            get(admin::get_limits).put(admin::put_limits),
        )
        .route(
            "/admin/accounts/{account_id}/api-keys",
            get(admin::list_keys).post(admin::create_key),
        )
        .route(
            "/admin/accounts/{account_id}/api-keys/{key_id}",
            axum::routing::delete(admin::revoke_key),
        )
        .route("/", get(dashboard::index))
        .route("/ui/app.js", get(dashboard::script))
        .route("/ui/app.css", get(dashboard::style))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::RouteNotFound,
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(rate_limit::stamp_quota))
        // The request's span is `request_id::assign`'s; the trace layer logs within it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|_: &axum::extract::Request| tracing::Span::current()),
        )
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::internal("handler panicked"))
        }))
        // Outside the panic catcher, so a panic counts as the 500 it answers; a layer of
        // the router runs after routing, so it sees the matched route template.
        .layer(axum::middleware::from_fn(http_metrics::record))
        .layer(axum::middleware::from_fn(request_id::assign))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then stops accepting connections and drains
/// in-flight requests for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), ApiStartError> {
    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, "api listening");
    let signal = shutdown.clone();
    let database = state.database.clone();
    // Event streams never end on their own: they end at shutdown, so the drain below
    // waits only for ordinary requests.
    let streams = state.live.shutdown();
    let stop_streams = shutdown.clone();
    tokio::spawn(async move {
        stop_streams.cancelled().await;
        streams.cancel();
    });
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { signal.cancelled().await })
        .into_future();
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served?,
        _ = deadline => tracing::warn!(?grace, "requests still in flight at the shutdown deadline; exiting"),
    }
    infra::mongo::close(&database).await;
    tracing::info!("api stopped");
    Ok(())
}

/// Waits for Redis (with backoff) before listening: an api that cannot accept actions
/// should not be in a load balancer's pool. MongoDB is checked by `/readyz`.
pub async fn run(config: ApiConfig, shutdown: CancellationToken) -> Result<(), ApiStartError> {
    let Some(state) =
        infra::retry::until_ok("redis", &shutdown, || AppState::connect(&config)).await
    else {
        return Ok(());
    };
    // Bound first: a taken metrics port stops the api before it takes traffic.
    if let Some(exporter) = infra::metrics::bind(&config.metrics).await? {
        tokio::spawn(exporter.serve(shutdown.clone()));
    }
    let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    serve(listener, state, shutdown, grace).await
}
