//! Test harness: real services as child processes, and the platform's own components
//! running in-process over real connections.
//!
//! `Services::start` launches a private `redis-server`, PostgreSQL and FerretDB on free
//! ports with temporary data directories; dropping it stops them. `TestApp::spawn` runs the
//! api, consumers and projector in-process against those services; `Deployment::start`
//! runs the real binaries as child processes, for the tests that kill them.

mod app;
mod client;
mod cluster;
mod deployment;
mod services;
mod sse;

pub use app::{AppOptions, TestApp};
pub use client::{codes, error_code, ApiClient, Reply, ONE_REPLY, TEST_ADMIN_TOKEN};
pub use cluster::RedisCluster;
pub use deployment::{built_binary, Deployment, DeploymentOptions};
pub use services::{binary, which, Services};
pub use sse::{SseMessage, SseStream};

/// `BULK_TEST_REDIS=cluster`: every `TestApp` and `Deployment` runs on a Redis Cluster of
/// its own instead of the services' single Redis.
pub fn on_cluster() -> bool {
    std::env::var("BULK_TEST_REDIS").is_ok_and(|redis| redis == "cluster")
}

/// Every event of `action`'s stream, page by page (a page ends at 4 MiB, so one read is
/// not the whole stream).
pub async fn all_events(
    store: &infra::EventStore,
    action: domain::ActionId,
) -> Result<Vec<infra::StoredEvent>, infra::StoreError> {
    let mut events: Vec<infra::StoredEvent> = Vec::new();
    loop {
        let after = events.last().map(|event| event.position.clone());
        let page = store.read(action, after.as_deref(), 1_000).await?;
        if page.is_empty() {
            return Ok(events);
        }
        events.extend(page);
    }
}
