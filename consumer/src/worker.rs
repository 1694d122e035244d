//! One worker: a member of the consumer group that applies one batch at a time.
//!
//! Order of business on every turn: its own pending entries first (work it was given
//! before a restart), then entries abandoned by dead consumers, then new work.
//!
//! Failures are of two kinds. An outage (MongoDB unreachable) is waited out with backoff,
//! holding the batch, without counting against it. A failure the server reports about the
//! batch counts as an attempt; attempts are counted in Redis, before each one starts, so
//! crashes count too, and the batch goes to the dead-letter stream after `max_attempts`.

use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};
use tokio::sync::Notify;

use infra::keys::CONSUMER_GROUP;
use infra::redis_conn::Blocking;
use infra::work::{self, ReadFrom, WorkItem};
use infra::{EventStore, Settlement};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apply::DocumentWriter;

mod batch;

/// How a batch that fails is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts before the batch is dead-lettered.
    pub max_attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

/// The batch a worker holds right now, so the process can hand it back if the worker is
/// stopped mid-batch at the shutdown deadline.
pub type InFlight = Arc<Mutex<Option<WorkItem>>>;

pub struct Worker {
    pub name: String,
    pub store: Settlement,
    pub writer: DocumentWriter,
    pub streams: Vec<String>,
    pub redis_url: String,
    pub block: Duration,
    pub claim_idle: Duration,
    pub retry: RetryPolicy,
    pub in_flight: InFlight,
    /// The default processing limit, to refund a parked batch's charge.
    pub records_per_minute: u32,
    /// Pinged after each batch, so the dispatcher tops the work stream up at once.
    pub settled: Arc<Notify>,
    /// Benchmarks only: added to every attempt, like a slow downstream api.
    pub simulated_latency: Duration,
    /// The most an account's kept records may take (`RESULT_KEPT_MAX_BYTES_PER_ACCOUNT`).
    pub kept_per_account: u64,
}

impl Worker {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut delays = infra::retry::reconnect_delays();
        while !shutdown.is_cancelled() {
            match self.serve(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    let pause = delays.next().unwrap_or(Duration::from_secs(5));
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
        let mut last_claim: Option<Instant> = None;
        let mut next_stream = 0usize;
        while !shutdown.is_cancelled() {
            // Abandoned work goes before new work; while there is some, keep claiming.
            if last_claim.is_none_or(|at| at.elapsed() >= self.claim_idle / 2) {
                last_claim = Some(Instant::now());
                if self.claim_abandoned(&mut conn, shutdown).await? {
                    last_claim = None;
                    continue;
                }
            }
            let entries = match from {
                ReadFrom::OwnPending => {
                    let entries = self.read(&mut conn, &self.streams, from).await?;
                    if entries.is_empty() {
                        from = ReadFrom::New;
                        continue;
                    }
                    entries
                }
                ReadFrom::New => self.read_next(&mut conn, &mut next_stream).await?,
            };
            for (stream, entry) in entries {
                self.handle(&mut conn, stream, &entry, shutdown).await?;
                self.settled.notify_one();
            }
        }
        Ok(())
    }

    async fn read(
        &self,
        conn: &mut Blocking,
        streams: &[String],
        from: ReadFrom,
    ) -> Result<Vec<(String, redis::streams::StreamId)>, infra::StoreError> {
        work::read_group(
            conn,
            streams,
            CONSUMER_GROUP,
            &self.name,
            from,
            1,
            self.block,
        )
        .await
    }

    /// One new entry, taking the partitions in turn so that none is served before the
    /// others; blocks on all of them when all are empty.
    async fn read_next(
        &self,
        conn: &mut Blocking,
        next_stream: &mut usize,
    ) -> Result<Vec<(String, redis::streams::StreamId)>, infra::StoreError> {
        let count = self.streams.len();
        for offset in 0..count {
            let stream = &self.streams[(*next_stream + offset) % count];
            let entries = work::read_group(
                conn,
                std::slice::from_ref(stream),
                CONSUMER_GROUP,
                &self.name,
                ReadFrom::New,
                1,
                Duration::ZERO,
            )
            .await?;
            if !entries.is_empty() {
                *next_stream = (*next_stream + offset + 1) % count;
                return Ok(entries);
            }
        }
        self.read(conn, &self.streams, ReadFrom::New).await
    }

    /// Claims and applies one abandoned batch, if any. One at a time: whatever a worker
    /// claims sits in its name unattended until it gets to it, and other workers would
    /// only claim it back.
    async fn claim_abandoned(
        &self,
        conn: &mut Blocking,
        shutdown: &CancellationToken,
    ) -> Result<bool, infra::StoreError> {
        for stream in &self.streams {
            let claimed =
                work::claim_idle(conn, stream, CONSUMER_GROUP, &self.name, self.claim_idle, 1)
                    .await?;
            let Some(entry) = claimed.into_iter().next() else {
                continue;
            };
            if shutdown.is_cancelled() {
                if let Some(item) = work::work_item(stream.clone(), &entry) {
                    self.hand_back(&item).await;
                }
                return Ok(false);
            }
            tracing::info!(worker = %self.name, entry = %entry.id, "claimed abandoned work");
            self.handle(conn, stream.clone(), &entry, shutdown).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn handle(
        &self,
        conn: &mut Blocking,
        stream: String,
        entry: &redis::streams::StreamId,
        shutdown: &CancellationToken,
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
        self.set_in_flight(Some(item.clone()));
        let span = tracing::info_span!(
            "batch",
            worker = %self.name,
            action = %item.action_id,
            batch = item.batch,
            account = tracing::field::Empty,
        );
        let result = self.process(conn, &item, shutdown).instrument(span).await;
        self.set_in_flight(None);
        result
    }

    fn set_in_flight(&self, item: Option<WorkItem>) {
        if let Ok(mut slot) = self.in_flight.lock() {
            *slot = item;
        }
    }

    async fn hand_back(&self, item: &WorkItem) {
        hand_back(&self.store, item, &self.name, self.claim_idle).await;
    }

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

/// Makes `item` immediately claimable by other consumers (best effort: if Redis is down,
/// it becomes claimable after `claim_idle` anyway).
pub async fn hand_back(store: &EventStore, item: &WorkItem, consumer: &str, claim_idle: Duration) {
    let mut conn = store.connection();
    match work::hand_back(&mut conn, item, CONSUMER_GROUP, consumer, claim_idle).await {
        Ok(()) => {
            tracing::info!(action = %item.action_id, batch = item.batch, "handed the batch back")
        }
        Err(error) => {
            tracing::warn!(%error, action = %item.action_id, batch = item.batch, "could not hand the batch back; it will be claimed when idle")
        }
    }
}
