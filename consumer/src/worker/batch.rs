//! The life of one batch in a worker's hands: parked if its action is paused, settled
//! unprocessed if cancelled before any attempt, else attempted until applied, handed back at
//! shutdown, or dead-lettered once its attempts run out (after a look at what they wrote).

use std::time::{Duration, Instant};

use domain::lifecycle::BatchTurn;
use domain::plan::{DeadLettered, StoreCheck};
use domain::results::batch_submitted;
use domain::{Batch, OutcomeCode, RecordOutcome};
use infra::event_store::{ActionMeta, CancelSettlement, DeadLetter};
use infra::keys::CONSUMER_GROUP;
use infra::redis_conn::Blocking;
use infra::work::{self, WorkItem};
use infra::AttemptStart;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Worker;
use crate::apply::{BatchInRedis, Target};

/// How many times the look at what a batch wrote, before it is dead-lettered, may itself be
/// cut off (its consumer killed) before the batch is dead-lettered without it.
const MAX_RECONCILE_TRIES: u32 = 3;

/// What the look at a batch's writes before its dead letter found.
enum Checked {
    Reconciled(Vec<RecordOutcome>),
    /// Shut down while the store was unreachable: the batch goes back, to be dead-lettered
    /// by whoever claims it.
    Later,
    /// The look failed or was cut off too often: every record stays `dead_lettered`.
    Impossible,
}

/// Whether a batch's turn leaves it to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Parked or settled: nothing more to do with it here.
    Done,
    Apply,
}

enum AttemptResult {
    Applied(Vec<RecordOutcome>),
    Failed(String),
    /// Shutdown came while waiting out an outage.
    Interrupted,
}

impl AttemptResult {
    /// The `result` label of the attempt's duration.
    fn label(&self) -> &'static str {
        match self {
            AttemptResult::Applied(_) => "applied",
            AttemptResult::Failed(_) => "failed",
            AttemptResult::Interrupted => "interrupted",
        }
    }
}

async fn discard_item(conn: &mut Blocking, item: &WorkItem) -> Result<(), infra::StoreError> {
    work::discard(
        conn,
        &item.stream,
        CONSUMER_GROUP,
        std::slice::from_ref(&item.entry_id),
    )
    .await
}

impl Worker {
    pub(super) async fn process(
        &self,
        conn: &mut Blocking,
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
        let mut turn = meta.batch_turn();
        loop {
            if self.take_turn(item, &meta, &batch, turn).await? == Turn::Done {
                return Ok(());
            }
            // To be applied, or cancelled after an attempt began: that attempt may have
            // written to MongoDB, so the batch is applied to the end, which reports what it
            // did. A pause or cancel since the look above refuses the first attempt.
            match self.store.begin_attempt(item).await? {
                AttemptStart::Began(attempt) => {
                    self.store
                        .append_once(
                            item.action_id,
                            "started",
                            &domain::EventPayload::Started {},
                            infra::clock::now(),
                        )
                        .await?;
                    return self
                        .apply_with_retries(&meta, item, &batch, attempt, shutdown)
                        .await;
                }
                AttemptStart::Refused(now) => turn = now,
            }
        }
    }

    /// Parks the batch of a paused action (unless resumed meanwhile) and settles that of a
    /// cancelled one as unprocessed (unless an attempt has touched it).
    async fn take_turn(
        &self,
        item: &WorkItem,
        meta: &ActionMeta,
        batch: &Batch,
        mut turn: BatchTurn,
    ) -> Result<Turn, infra::StoreError> {
        if turn == BatchTurn::Hold {
            let cost = u32::try_from(batch.records.len()).unwrap_or(u32::MAX);
            let parked = self
                .store
                .park(
                    item,
                    &self.name,
                    &meta.account_id,
                    cost,
                    self.records_per_minute,
                )
                .await?;
            let Some(now) = parked else {
                tracing::warn!("batch taken over by another consumer while this one stalled");
                return Ok(Turn::Done);
            };
            turn = now;
            if turn == BatchTurn::Hold {
                tracing::debug!("batch parked: its action is paused");
                return Ok(Turn::Done);
            }
        }
        if turn == BatchTurn::SettleUnprocessed
            && self.settle_unprocessed(item, meta, batch).await? == CancelSettlement::Settled
        {
            return Ok(Turn::Done);
        }
        Ok(Turn::Apply)
    }

    /// Attempts, from `first` on, until one applies the batch, the attempts run out (dead
    /// letter) or the consumer shuts down (the batch is handed back).
    async fn apply_with_retries(
        &self,
        meta: &ActionMeta,
        item: &WorkItem,
        batch: &Batch,
        first: u32,
        shutdown: &CancellationToken,
    ) -> Result<(), infra::StoreError> {
        let began = Instant::now();
        let mut last_error: Option<String> = None;
        let mut delays = infra::retry::delays(self.retry.first_delay, self.retry.max_delay);
        let mut attempt = first;
        loop {
            if attempt > self.retry.max_attempts {
                return self
                    .dead_letter(meta, item, batch, attempt, last_error, shutdown)
                    .await;
            }
            // Carries the batch's fields itself, so a JSON log line of the attempt names
            // the action, batch, attempt and account in its own span.
            let span = tracing::info_span!(
                "attempt",
                action = %item.action_id,
                batch = item.batch,
                attempt,
                account = %meta.account_id,
                action_type = meta.action_type.as_str(),
            );
            let started = Instant::now();
            let result = self
                .while_holding(item, self.attempt(meta, item, batch, attempt, shutdown))
                .instrument(span)
                .await;
            crate::metrics::attempt_took(meta.action_type, result.label(), started.elapsed());
            let error = match result {
                AttemptResult::Applied(outcomes) => {
                    let counted = crate::metrics::OutcomeCounts::of(&outcomes);
                    let submitted = self.kept_records(meta, batch, &outcomes).await?;
                    let kept = domain::results::kept_size(&submitted);
                    let settled = self
                        .store
                        .settle_batch(
                            item,
                            outcomes,
                            submitted,
                            &self.name,
                            attempt,
                            infra::clock::now(),
                        )
                        .await?;
                    if settled.is_some() {
                        self.charge_kept(meta, kept).await;
                        counted.record(meta.action_type);
                        crate::metrics::batch_applied(meta.action_type);
                    }
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
            // Past the limit, the next count dead-letters it at once.
            if attempt < self.retry.max_attempts {
                crate::metrics::batch_retried(meta.action_type);
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
            attempt = self.next_attempt(item).await?;
        }
    }

    /// The number of the next attempt at a batch an attempt has touched: never refused.
    async fn next_attempt(&self, item: &WorkItem) -> Result<u32, infra::StoreError> {
        match self.store.begin_attempt(item).await? {
            AttemptStart::Began(attempt) => Ok(attempt),
            AttemptStart::Refused(turn) => Err(infra::StoreError::Corrupt(format!(
                "attempt {} refused ({turn:?}) after an attempt had begun",
                item.batch
            ))),
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
        let (mut target, memory) = self.target(meta, item, attempt);
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
                    if wait_out(&error, &mut outage_delays, shutdown).await == Waited::ShutDown {
                        return AttemptResult::Interrupted;
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
        meta: &ActionMeta,
        batch: &Batch,
    ) -> Result<CancelSettlement, infra::StoreError> {
        let outcomes = batch.outcomes_all(
            OutcomeCode::Unprocessed,
            "the action was cancelled before this record was applied",
        );
        let submitted = self.kept_records(meta, batch, &outcomes).await?;
        let kept = domain::results::kept_size(&submitted);
        let counted = crate::metrics::OutcomeCounts::of(&outcomes);
        let settled = self
            .store
            .settle_cancelled(item, outcomes, submitted, infra::clock::now())
            .await?;
        if settled == CancelSettlement::Settled {
            self.charge_kept(meta, kept).await;
            counted.record(meta.action_type);
        }
        Ok(settled)
    }

    /// The records of `batch` that did not succeed, as kept for the result files, within
    /// what the action and its account may still keep.
    async fn kept_records(
        &self,
        meta: &ActionMeta,
        batch: &Batch,
        outcomes: &[domain::RecordOutcome],
    ) -> Result<Vec<domain::results::SubmittedRecord>, infra::StoreError> {
        let account_kept = self.store.account_kept(&meta.account_id).await?;
        let room = meta.kept_room(account_kept, self.kept_per_account);
        Ok(batch_submitted(batch, outcomes, meta.entity_type, room))
    }

    /// Counts what a settlement kept against its account. A failure leaves the count low
    /// (the bound guards Redis, it is not a ledger), so it is logged, not retried.
    async fn charge_kept(&self, meta: &ActionMeta, bytes: u64) {
        if let Err(error) = self.store.charge_kept(&meta.account_id, bytes).await {
            tracing::warn!(%error, bytes, "could not count the kept records against the account");
        }
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
        shutdown: &CancellationToken,
    ) -> Result<(), infra::StoreError> {
        // Attempts past the limit were looks at what the batch wrote, not attempts.
        let attempts = (attempt - 1).min(self.retry.max_attempts);
        let error = last_error.as_deref();
        let checked = batch.dead_lettered(attempts, error, StoreCheck::Checked);
        let look = self.checked(meta, item, batch, attempt, &checked.outcomes, shutdown);
        let DeadLettered { error, outcomes } = match self.while_holding(item, look).await {
            Checked::Reconciled(outcomes) => DeadLettered {
                error: checked.error,
                outcomes,
            },
            Checked::Later => {
                self.hand_back(item).await;
                return Ok(());
            }
            Checked::Impossible => batch.dead_lettered(attempts, error, StoreCheck::Unchecked),
        };
        tracing::error!(attempts, %error, "batch dead-lettered");
        let submitted = self.kept_records(meta, batch, &outcomes).await?;
        let kept = domain::results::kept_size(&submitted);
        let counted = crate::metrics::OutcomeCounts::of(&outcomes);
        let dead_letter = DeadLetter {
            attempts,
            error,
            outcomes,
            submitted,
        };
        let settled = self
            .store
            .dead_letter(item, dead_letter, infra::clock::now())
            .await?;
        if settled.is_some() {
            self.charge_kept(meta, kept).await;
            counted.record(meta.action_type);
            crate::metrics::batch_dead_lettered(meta.action_type);
        }
        Ok(())
    }

    /// `dead_lettered` with the records an attempt put in the store reported as applied.
    async fn checked(
        &self,
        meta: &ActionMeta,
        item: &WorkItem,
        batch: &Batch,
        attempt: u32,
        dead_lettered: &[RecordOutcome],
        shutdown: &CancellationToken,
    ) -> Checked {
        if attempt > self.retry.max_attempts + MAX_RECONCILE_TRIES {
            return Checked::Impossible;
        }
        let (target, memory) = self.target(meta, item, attempt);
        let mut outage_delays = infra::retry::reconnect_delays();
        loop {
            let outcomes = dead_lettered.to_vec();
            match self
                .writer
                .reconcile(target, batch, outcomes, &memory)
                .await
            {
                Ok(reconciled) => return Checked::Reconciled(reconciled),
                Err(error) if error.is_outage() => {
                    if wait_out(&error, &mut outage_delays, shutdown).await == Waited::ShutDown {
                        return Checked::Later;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot check what the batch wrote; dead-lettering every record");
                    return Checked::Impossible;
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Waited {
    Paused,
    ShutDown,
}

/// One pause of a MongoDB outage (the delays grow to 5 s), unless the consumer shuts down.
async fn wait_out(
    error: &crate::apply::ApplyError,
    delays: &mut impl Iterator<Item = Duration>,
    shutdown: &CancellationToken,
) -> Waited {
    let pause = delays.next().unwrap_or(Duration::from_secs(5));
    tracing::warn!(%error, ?pause, "MongoDB is unreachable; waiting");
    tokio::select! {
        _ = shutdown.cancelled() => Waited::ShutDown,
        _ = tokio::time::sleep(pause) => Waited::Paused,
    }
}

impl Worker {
    /// Where attempt `attempt` at `item` writes, and where it remembers what it found.
    fn target<'a>(
        &'a self,
        meta: &'a ActionMeta,
        item: &'a WorkItem,
        attempt: u32,
    ) -> (Target<'a>, BatchInRedis<'a>) {
        let target = Target {
            account: &meta.account_id,
            action: item.action_id,
            action_type: meta.action_type,
            entity: meta.entity_type,
            attempt,
        };
        let memory = BatchInRedis {
            store: &self.store,
            item,
        };
        (target, memory)
    }
}
