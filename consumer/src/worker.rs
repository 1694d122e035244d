//! One worker: a member of the consumer group that applies one batch at a time.
//!
//! Order of business on every turn: its own pending entries first (work it was given
//! before a restart), then entries abandoned by dead consumers, then new work.

use std::time::{Duration, Instant};

use infra::keys::CONSUMER_GROUP;
use infra::work::{self, ReadFrom, WorkItem};
use infra::EventStore;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::apply::ContactWriter;

/// Attempts at one batch within one delivery before leaving it pending for redelivery.
const ATTEMPTS_PER_DELIVERY: u32 = 5;
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);
const CLAIM_BATCH: usize = 16;

pub struct Worker {
    pub name: String,
    pub store: EventStore,
    pub writer: ContactWriter,
    pub streams: Vec<String>,
    pub redis_url: String,
    pub block: Duration,
    pub claim_idle: Duration,
}

impl Worker {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.serve(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    failures += 1;
                    let pause = backoff(failures);
                    tracing::warn!(worker = %self.name, %error, ?pause, "worker lost its connection; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    async fn serve(&self, shutdown: &CancellationToken) -> Result<(), infra::StoreError> {
        let mut conn = infra::redis_conn::blocking(&self.redis_url, self.block).await?;
        work::ensure_groups(&mut conn, &self.streams, CONSUMER_GROUP).await?;
        let mut from = ReadFrom::OwnPending;
        let mut last_claim = Instant::now();
        while !shutdown.is_cancelled() {
            if last_claim.elapsed() >= self.claim_idle / 2 {
                last_claim = Instant::now();
                self.claim_abandoned(&mut conn).await?;
            }
            let entries = work::read_group(
                &mut conn,
                &self.streams,
                CONSUMER_GROUP,
                &self.name,
                from,
                1,
                self.block,
            )
            .await?;
            if entries.is_empty() && from == ReadFrom::OwnPending {
                from = ReadFrom::New;
                continue;
            }
            for (stream, entry) in entries {
                self.handle(&mut conn, stream, &entry).await?;
            }
        }
        Ok(())
    }

    async fn claim_abandoned(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), infra::StoreError> {
        for stream in &self.streams {
            let claimed = work::claim_idle(
                conn,
                stream,
                CONSUMER_GROUP,
                &self.name,
                self.claim_idle,
                CLAIM_BATCH,
            )
            .await?;
            for entry in claimed {
                tracing::info!(worker = %self.name, entry = %entry.id, "claimed abandoned work");
                self.handle(conn, stream.clone(), &entry).await?;
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        conn: &mut MultiplexedConnection,
        stream: String,
        entry: &redis::streams::StreamId,
    ) -> Result<(), infra::StoreError> {
        let Some(item) = work::work_item(stream.clone(), entry) else {
            tracing::error!(%stream, entry = %entry.id, "dropping a malformed work entry");
            return work::discard(
                conn,
                &stream,
                CONSUMER_GROUP,
                std::slice::from_ref(&entry.id),
            )
            .await;
        };
        self.process(conn, &item).await
    }

    async fn process(
        &self,
        conn: &mut MultiplexedConnection,
        item: &WorkItem,
    ) -> Result<(), infra::StoreError> {
        let Some(meta) = self.store.meta(item.action_id).await? else {
            tracing::error!(action = %item.action_id, "work for an unknown action; dropping it");
            return discard_item(conn, item).await;
        };
        let Some(batch) = self.store.load_batch(item.action_id, item.batch).await? else {
            // The payload is removed in the same step that records the batch, so it was done.
            return discard_item(conn, item).await;
        };
        let started_at = infra::clock::now();
        self.store
            .append_once(
                item.action_id,
                "started",
                &domain::EventPayload::Started {},
                started_at,
            )
            .await?;

        let began = Instant::now();
        let attempts = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self
                    .writer
                    .apply(&meta.account_id, meta.action_type, &batch)
                    .await
                {
                    Ok(outcomes) => return Some(outcomes),
                    Err(error) if attempt < ATTEMPTS_PER_DELIVERY => {
                        let pause = backoff(attempt);
                        tracing::warn!(action = %item.action_id, batch = item.batch, attempt, %error, ?pause, "batch failed; retrying");
                        tokio::time::sleep(pause).await;
                    }
                    Err(error) => {
                        tracing::error!(action = %item.action_id, batch = item.batch, %error, "batch failed; leaving it for redelivery");
                        return None;
                    }
                }
            }
        };
        let Some(outcomes) = self.while_holding(item, attempts).await else {
            // Left pending: redelivered to this worker on restart or claimed by another.
            return Ok(());
        };
        self.store
            .settle_batch(item, outcomes, &self.name, infra::clock::now())
            .await?;
        tracing::debug!(action = %item.action_id, batch = item.batch, records = batch.records.len(), elapsed_ms = began.elapsed().as_millis() as u64, "batch applied");
        Ok(())
    }
}

impl Worker {
    /// Runs `work` while keeping `item` claimed, so that a slow batch is not taken over.
    async fn while_holding<T>(
        &self,
        item: &WorkItem,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut conn = self.store.connection();
        let mut heartbeat =
            tokio::time::interval((self.claim_idle / 3).max(Duration::from_millis(100)));
        heartbeat.tick().await;
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = heartbeat.tick() => {
                    if let Err(error) = work::keep_claimed(&mut conn, &item.stream, CONSUMER_GROUP, &self.name, &item.entry_id).await {
                        tracing::warn!(%error, entry = %item.entry_id, "could not refresh the claim on a batch");
                    }
                }
            }
        }
    }
}

async fn discard_item(
    conn: &mut MultiplexedConnection,
    item: &WorkItem,
) -> Result<(), infra::StoreError> {
    work::discard(
        conn,
        &item.stream,
        CONSUMER_GROUP,
        std::slice::from_ref(&item.entry_id),
    )
    .await
}

/// Capped exponential backoff with full jitter.
fn backoff(attempt: u32) -> Duration {
    let ceiling = RETRY_BASE
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(RETRY_CAP);
    let jittered = rand::random_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(jittered.max(10))
}
