//! Feeds the work streams: asks each partition's dispatch script for the batches that may
//! go now (fair across accounts, within budgets and paces), then sleeps until the earliest
//! of: a held-back batch could go, a local worker finished one, or the next tick.
//!
//! Every consumer process runs one; the script is atomic, so any number of them share one
//! set of budgets and one round-robin order. It also announces this process' workers, so
//! that the dispatch keeps about as many batches outstanding as there are workers to take
//! them: more would queue behind one account's backlog and delay other accounts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use infra::flow::DispatchLimits;
use infra::Scheduling;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
const ANNOUNCEMENT_TTL_MS: i64 = 10_000;
const GRANTS_PER_CALL: u32 = 64;

pub struct Dispatcher {
    pub store: Scheduling,
    pub process_name: String,
    pub workers: usize,
    pub records_per_minute: u32,
    pub burst_seconds: u32,
    /// Batches outstanding beyond one per live worker, so a worker finishing a batch finds
    /// the next one waiting.
    pub lookahead: u32,
    pub tick: Duration,
    /// Workers ping it when they settle a batch.
    pub settled: Arc<Notify>,
}

impl Dispatcher {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut announced: Option<Instant> = None;
        let mut live_workers = self.workers as u32;
        while !shutdown.is_cancelled() {
            if announced.is_none_or(|at| at.elapsed() >= ANNOUNCE_EVERY) {
                match self.announce().await {
                    Ok(workers) => {
                        live_workers = workers.max(1);
                        announced = Some(Instant::now());
                    }
                    Err(error) => tracing::warn!(%error, "could not announce this consumer"),
                }
            }
            let pause = self.dispatch_all(live_workers).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
                _ = self.settled.notified() => {}
            }
        }
        if let Err(error) = self.store.deregister_consumer(&self.process_name).await {
            tracing::warn!(%error, "could not deregister this consumer; it expires on its own");
        }
    }

    /// Announces this process and counts every live one's workers. Expiry times are on
    /// Redis' clock: a process whose clock is off must not expire the others' announcements
    /// early, nor have its own outlive it.
    async fn announce(&self) -> Result<u32, infra::StoreError> {
        let registry = self.store.keys().consumers();
        let now = infra::clock::redis_now(&mut self.store.connection(), &registry)
            .await?
            .millis();
        self.store
            .register_consumer(&self.process_name, self.workers, now + ANNOUNCEMENT_TTL_MS)
            .await?;
        self.store.live_workers(now).await
    }

    /// One dispatch round over every partition; returns how long to sleep.
    async fn dispatch_all(&self, live_workers: u32) -> Duration {
        let limits = DispatchLimits {
            default_records_per_minute: self.records_per_minute,
            burst_seconds: self.burst_seconds,
            max_outstanding: live_workers.saturating_add(self.lookahead),
            max_grants: GRANTS_PER_CALL,
        };
        let mut pause = self.tick;
        for partition in self.store.keys().partitions() {
            match self.store.dispatch(partition, limits).await {
                Ok(dispatched) => {
                    if dispatched.granted > 0 {
                        tracing::debug!(
                            partition,
                            granted = dispatched.granted,
                            "batches dispatched"
                        );
                    }
                    if let Some(wait) = dispatched.wait_ms {
                        pause = pause.min(Duration::from_millis(wait.max(1)));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, partition, "dispatch failed; retrying next tick")
                }
            }
        }
        pause
    }
}
