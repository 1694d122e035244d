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

use infra::flow::ParkDecision;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use domain::{Batch, OutcomeCode, RecordOutcome};
use infra::event_store::{ActionMeta, CancelSettlement, DeadLetter};
use infra::keys::CONSUMER_GROUP;
use infra::work::{self, ReadFrom, WorkItem};
use infra::EventStore;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apply::{BatchInRedis, ContactWriter, Target};

/// How many times the look at what a batch wrote, before it is dead-lettered, may itself be
/// cut off (its consumer killed) before the batch is dead-lettered without it.
const MAX_RECONCILE_TRIES: u32 = 3;

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
    pub store: EventStore,
    pub writer: ContactWriter,
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
}

enum AttemptResult {
    Applied(Vec<RecordOutcome>),
    Failed(String),
    /// Shutdown came while waiting out an outage.
    Interrupted,
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
        conn: &mut MultiplexedConnection,
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
        conn: &mut MultiplexedConnection,
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
        conn: &mut MultiplexedConnection,
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
        conn: &mut MultiplexedConnection,
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

    async fn process(
        &self,
        conn: &mut MultiplexedConnection,
        item: &WorkItem,
        shutdown: &CancellationToken,
    ) -> Result<(), infra::StoreError> {
        let Some(meta) = self.store.meta(item.action_id).await? else {
            tracing::error!("work for an unknown action; dropping it");
            return discard_item(conn, item).await;
        };
        let Some(batch) = self.store.load_batch(item.action_id, item.batch).await? else {
            // The payload is removed in the same step that records the batch, so it was done.
            return discard_item(conn, item).await;
        };
        tracing::Span::current().record("account", tracing::field::display(&meta.account_id));
        let mut cancelled = meta.cancelled;
        if meta.paused && !cancelled {
            let cost = u32::try_from(batch.records.len()).unwrap_or(u32::MAX);
            match self
                .store
                .park(item, &meta.account_id, cost, self.records_per_minute)
                .await?
            {
                ParkDecision::Parked => {
                    tracing::debug!("batch parked: its action is paused");
                    return Ok(());
                }
                ParkDecision::Cancelled => cancelled = true,
                ParkDecision::Run => {}
            }
        }
        if cancelled && self.settle_unprocessed(item, &batch).await? == CancelSettlement::Settled {
            return Ok(());
        }
        // Not cancelled, or cancelled after an attempt began: that attempt may have written
        // to MongoDB, so the batch is applied to the end, which reports what it did.
        self.store
            .append_once(
                item.action_id,
                "started",
                &domain::EventPayload::Started {},
                infra::clock::now(),
            )
            .await?;

        self.apply_with_retries(&meta, item, &batch, shutdown).await
    }

    /// Attempts until one applies the batch, the attempts run out (dead letter) or the
    /// consumer shuts down (the batch is handed back).
    async fn apply_with_retries(
        &self,
        meta: &ActionMeta,
        item: &WorkItem,
        batch: &Batch,
        shutdown: &CancellationToken,
    ) -> Result<(), infra::StoreError> {
        let began = Instant::now();
        let mut last_error: Option<String> = None;
        let mut delays = infra::retry::delays(self.retry.first_delay, self.retry.max_delay);
        loop {
            let attempt = self.store.begin_attempt(item).await?;
            if attempt > self.retry.max_attempts {
                return self
                    .dead_letter(meta, item, batch, attempt, last_error)
                    .await;
            }
            let result = self
                .while_holding(item, self.attempt(meta, item, batch, attempt, shutdown))
                .instrument(tracing::info_span!("attempt", attempt))
                .await;
            let error = match result {
                AttemptResult::Applied(outcomes) => {
                    self.store
                        .settle_batch(item, outcomes, &self.name, attempt, infra::clock::now())
                        .await?;
                    tracing::debug!(
                        attempt,
                        records = batch.records.len(),
                        elapsed_ms = began.elapsed().as_millis() as u64,
                        "batch applied"
                    );
                    return Ok(());
                }
                AttemptResult::Interrupted => {
                    self.hand_back(item).await;
                    return Ok(());
                }
                AttemptResult::Failed(error) => error,
            };
            let pause = delays.next().unwrap_or(self.retry.max_delay);
            tracing::warn!(attempt, max_attempts = self.retry.max_attempts, %error, ?pause, "batch failed");
            last_error = Some(error);
            if attempt >= self.retry.max_attempts {
                continue; // The next count is past the limit: dead-letter it now.
            }
            let waited = self
                .while_holding(item, async {
                    tokio::select! {
                        _ = shutdown.cancelled() => false,
                        _ = tokio::time::sleep(pause) => true,
                    }
                })
                .await;
            if !waited {
                self.hand_back(item).await;
                return Ok(());
            }
        }
    }

    /// One attempt at the batch, waiting out MongoDB outages inside it.
    async fn attempt(
        &self,
        meta: &ActionMeta,
        item: &WorkItem,
        batch: &Batch,
        attempt: u32,
        shutdown: &CancellationToken,
    ) -> AttemptResult {
        let mut target = Target {
            account: &meta.account_id,
            action: item.action_id,
            action_type: meta.action_type,
            attempt,
        };
        let memory = BatchInRedis {
            store: &self.store,
            item,
        };
        if !self.simulated_latency.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return AttemptResult::Interrupted,
                _ = tokio::time::sleep(self.simulated_latency) => {}
            }
        }
        let mut outage_delays = infra::retry::reconnect_delays();
        loop {
            match self.writer.apply(target, batch, &memory).await {
                Ok(outcomes) => return AttemptResult::Applied(outcomes),
                Err(error) if error.is_outage() => {
                    // The outage may have cut a write that reached the server: the next
                    // try looks for what this action wrote, as a retried attempt does.
                    target.attempt = target.attempt.max(2);
                    let pause = outage_delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(%error, ?pause, "MongoDB is unreachable; waiting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return AttemptResult::Interrupted,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                // Bounded at once: it is logged on every attempt and kept for the dead letter.
                Err(error) => {
                    return AttemptResult::Failed(domain::text::bounded(
                        &error.to_string(),
                        domain::text::ERROR_MAX_BYTES,
                    ))
                }
            }
        }
    }

    /// A batch of a cancelled action that no attempt has touched is never applied: each
    /// record is `unprocessed`.
    async fn settle_unprocessed(
        &self,
        item: &WorkItem,
        batch: &Batch,
    ) -> Result<CancelSettlement, infra::StoreError> {
        let outcomes = batch.outcomes_all(
            OutcomeCode::Unprocessed,
            "the action was cancelled before this record was applied",
        );
        self.store
            .settle_cancelled(item, outcomes, infra::clock::now())
            .await
    }

    /// Settles the batch as dead-lettered; `attempt` is the one past the limit. Records
    /// whose change earlier attempts put in the store are reported as applied
    /// (`reconcile`), unless looking has itself been cut off too often.
    async fn dead_letter(
        &self,
        meta: &ActionMeta,
        item: &WorkItem,
        batch: &Batch,
        attempt: u32,
        last_error: Option<String>,
    ) -> Result<(), infra::StoreError> {
        let attempts = attempt - 1;
        // Bounded: a store's error may quote whatever the batch held.
        let domain::plan::DeadLettered {
            mut error,
            outcomes,
        } = batch.dead_lettered(attempts, last_error.as_deref());
        let unchecked = " (what the batch wrote could not be checked: its records are all \
                         reported dead_lettered, some may be applied)";
        let outcomes = if attempt <= self.retry.max_attempts + MAX_RECONCILE_TRIES {
            let target = Target {
                account: &meta.account_id,
                action: item.action_id,
                action_type: meta.action_type,
                attempt,
            };
            let memory = BatchInRedis {
                store: &self.store,
                item,
            };
            match self
                .writer
                .reconcile(target, batch, outcomes.clone(), &memory)
                .await
            {
                Ok(reconciled) => reconciled,
                Err(error) if error.is_outage() => {
                    tracing::warn!(%error, "cannot check what the batch wrote before dead-lettering it; handing it back");
                    self.hand_back(item).await;
                    return Ok(());
                }
                Err(cause) => {
                    tracing::error!(error = %cause, "cannot check what the batch wrote; dead-lettering every record");
                    error.push_str(unchecked);
                    outcomes
                }
            }
        } else {
            error.push_str(unchecked);
            outcomes
        };
        tracing::error!(attempts, %error, "batch dead-lettered");
        self.store
            .dead_letter(
                item,
                DeadLetter {
                    attempts,
                    error,
                    outcomes,
                },
                infra::clock::now(),
            )
            .await?;
        Ok(())
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
