//! Prometheus metrics, shared by the three binaries: the listener settings, the recorder,
//! and the small HTTP server that answers `GET /metrics` on `METRICS_PORT`.
//!
//! Recording goes through the `metrics` facade. Without `METRICS_PORT` no recorder is
//! installed and every `metrics::counter!` is a no-op, so a process that is not scraped
//! pays nothing. A recorder never fails the caller: recording a metric cannot fail a
//! request or a batch.
//!
//! Labels only ever take values from closed sets (action types, outcome codes, route
//! templates, partitions numbered by `STREAM_PARTITIONS`): never an account, an action, a
//! key or a raw path, which would make a series per tenant.

pub mod backlog;
pub mod names;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where a process serves its metrics. Flattened into each binary's settings.
#[derive(Debug, Clone, Args)]
pub struct MetricsConfig {
    /// Port of the Prometheus `GET /metrics` listener (0: any free port). Unset: no
    /// listener and nothing recorded. Keep it off the public load balancer.
    #[arg(long, env = "METRICS_PORT")]
    pub metrics_port: Option<u16>,

    /// Interface the metrics listener binds.
    #[arg(long, env = "METRICS_HOST", default_value = "0.0.0.0")]
    pub metrics_host: String,
}

impl MetricsConfig {
    /// No listener: what the in-process test apps use.
    pub fn off() -> Self {
        Self {
            metrics_port: None,
            metrics_host: "0.0.0.0".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics recorder: {0}")]
    Recorder(String),
    #[error("metrics listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Buckets of every `_seconds` histogram: from a fast request (5 ms) to a batch that waits
/// out a slow store (a minute).
const SECONDS_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// How often histograms are compacted when no one scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process' Prometheus recorder, once; later calls return the same handle (the
/// tests run several apps in one process).
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
                .map_err(|error| error.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|error| error.to_string())?;
            names::describe();
            Ok(handle)
        })
        .clone()
        .map_err(MetricsError::Recorder)
}

/// Binds the metrics listener when `METRICS_PORT` is set; `None` when it is not. Bound
/// before the process starts its work, so a taken port stops it at once.
pub async fn bind(config: &MetricsConfig) -> Result<Option<Exporter>, MetricsError> {
    let Some(port) = config.metrics_port else {
        return Ok(None);
    };
    let handle = install()?;
    let listener = TcpListener::bind((config.metrics_host.as_str(), port)).await?;
    Ok(Some(Exporter { listener, handle }))
}

/// A bound metrics listener and the recorder it renders.
pub struct Exporter {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl Exporter {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` until `shutdown`, keeping histograms compacted meanwhile.
    /// An error of the listener is logged, never fatal: the process' work goes on unscraped.
    pub async fn serve(self, shutdown: CancellationToken) {
        let address = self.listener.local_addr().ok();
        tracing::info!(?address, "metrics listening on /metrics");
        let upkeep = self.handle.clone();
        let stop_upkeep = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = stop_upkeep.cancelled() => return,
                    _ = every.tick() => upkeep.run_upkeep(),
                }
            }
        });
        let served = axum::serve(self.listener, router(self.handle))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the metrics listener stopped");
        }
    }
}

/// `GET /metrics` and nothing else.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics here\n").into_response() })
}
