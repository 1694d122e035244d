//! What consumers and schedulers write to an action's stream: attempts counted, batches
//! settled (applied, dead-lettered or cancelled, each exactly once, with `Completed` after
//! the last), releases of scheduled actions, and the end of an archived stream.

use domain::lifecycle::BatchTurn;
use domain::results::SubmittedRecord;
use domain::{ActionId, Batch, EventPayload, RecordOutcome, Timestamp, SCHEMA_VERSION};
use redis::AsyncCommands;
use ulid::Ulid;

use crate::event_store::StoreError;
use crate::keys::CONSUMER_GROUP;
use crate::roles::{Projection, Scheduling, Settlement};
use crate::work::WorkItem;

/// When `append_event.lua` may append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppendCondition {
    Always,
    /// Only if no attempt at the batch has begun.
    Unattempted,
}

/// One run of `append_event.lua`: an event, its guard, and what it settles.
#[derive(Clone, Copy)]
struct Append<'a> {
    action: ActionId,
    /// At most one event per guard (e.g. `started`, `batch:7`); empty: no guard.
    guard: &'a str,
    payload: &'a EventPayload,
    at: Timestamp,
    /// The batch it settles, whose payload and work entry go in the same step.
    settles: Option<&'a WorkItem>,
    /// A dead letter's error and attempts, copied with the batch to the dead-letter stream.
    dead_letter: Option<(&'a str, u32)>,
    condition: AppendCondition,
}

/// How settling a batch of a cancelled action went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelSettlement {
    /// Settled unprocessed (or it had been settled already).
    Settled,
    /// An attempt at it has begun: apply it instead, to learn what that attempt wrote.
    Attempted,
}

/// A batch that failed every allowed attempt.
pub struct DeadLetter {
    pub attempts: u32,
    pub error: String,
    /// One `dead_lettered` outcome per record of the batch.
    pub outcomes: Vec<RecordOutcome>,
    /// The records that did not succeed, for the result files (`results::batch_submitted`).
    pub submitted: Vec<SubmittedRecord>,
}

/// Whether an attempt at a batch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStart {
    /// Counted: this is its number.
    Began(u32),
    /// Not counted: the batch's turn is no longer to be applied.
    Refused(BatchTurn),
}

impl Settlement {
    /// Records `found` (the emails a delete batch found in the account) unless an earlier
    /// attempt at the batch recorded its own, and returns what is recorded: every attempt
    /// then deletes and reports the first attempt's set. `append_event.lua` removes it when
    /// the batch settles.
    pub async fn found_once(
        &self,
        item: &WorkItem,
        found: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let key = self.keys.meta(item.action_id);
        let field = format!("found:{}", item.batch);
        let (_, held): (i64, String) = redis::pipe()
            .atomic()
            .hset_nx(&key, &field, serde_json::to_string(found)?)
            .hget(&key, &field)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(serde_json::from_str(&held)?)
    }

    /// Counts one more attempt at a batch and returns its number (1 for the first).
    /// Counted before the attempt, so attempts that crash their consumer count too. The
    /// first is refused with the batch's turn if its action was paused or cancelled since
    /// the worker looked (`lua/begin_attempt.lua`).
    pub async fn begin_attempt(&self, item: &WorkItem) -> Result<AttemptStart, StoreError> {
        let (turn, attempt): (String, u32) = self
            .scripts
            .begin_attempt
            .key(self.keys.meta(item.action_id))
            .arg(item.batch)
            .invoke_async(&mut self.conn.clone())
            .await?;
        match BatchTurn::parse(&turn) {
            Some(BatchTurn::Apply) => Ok(AttemptStart::Began(attempt)),
            Some(turn) => Ok(AttemptStart::Refused(turn)),
            None => Err(StoreError::Corrupt(format!(
                "begin_attempt.lua answered an unknown turn {turn:?}"
            ))),
        }
    }

    /// Appends `payload` unless an event with the same `guard` was appended before.
    /// Returns the new seq, or `None` when the guard had already been used.
    pub async fn append_once(
        &self,
        action: ActionId,
        guard: &str,
        payload: &EventPayload,
        at: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        self.append(&Append {
            action,
            guard,
            payload,
            at,
            settles: None,
            dead_letter: None,
            condition: AppendCondition::Always,
        })
        .await
    }

    /// Records a batch's outcomes and retires its work item in one step; appends
    /// `Completed` if it was the action's last batch. Safe to repeat: only the first
    /// settlement of a batch is recorded.
    pub async fn settle_batch(
        &self,
        item: &WorkItem,
        outcomes: Vec<RecordOutcome>,
        submitted: Vec<SubmittedRecord>,
        consumer: &str,
        attempt: u32,
        at: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let payload = EventPayload::BatchProcessed {
            batch: item.batch,
            outcomes,
            submitted,
            consumer: consumer.to_owned(),
            attempt,
        };
        self.settle(item, &payload, at, None).await
    }

    /// Settles a batch that failed every attempt: `BatchDeadLettered` in the action's
    /// stream and the batch, records included, in the partition's dead-letter stream.
    pub async fn dead_letter(
        &self,
        item: &WorkItem,
        dead: DeadLetter,
        at: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let attempts = dead.attempts;
        // Bounded here too: the error goes into the dead-letter entry and the event as is.
        let error = if dead.error.is_empty() {
            "unknown error".to_owned()
        } else {
            domain::text::bounded(&dead.error, domain::text::ERROR_MAX_BYTES)
        };
        let payload = EventPayload::BatchDeadLettered {
            batch: item.batch,
            attempts,
            error: error.clone(),
            outcomes: dead.outcomes,
            submitted: dead.submitted,
        };
        self.settle(item, &payload, at, Some((&error, attempts)))
            .await
    }

    /// Settles a batch of a cancelled action without applying it, every record
    /// `unprocessed` — unless an attempt at it has begun: its writes may have reached
    /// MongoDB, so the batch must be applied to learn what it did (`Attempted`).
    pub async fn settle_cancelled(
        &self,
        item: &WorkItem,
        outcomes: Vec<RecordOutcome>,
        submitted: Vec<SubmittedRecord>,
        at: Timestamp,
    ) -> Result<CancelSettlement, StoreError> {
        let payload = EventPayload::BatchCancelled {
            batch: item.batch,
            outcomes,
            submitted,
        };
        let guard = format!("batch:{}", item.batch);
        let code = self
            .append_script(&Append {
                action: item.action_id,
                guard: &guard,
                payload: &payload,
                at,
                settles: Some(item),
                dead_letter: None,
                condition: AppendCondition::Unattempted,
            })
            .await?;
        match code {
            -1 => Err(StoreError::Corrupt(format!(
                "action {} has no meta",
                item.action_id
            ))),
            -2 => Ok(CancelSettlement::Attempted),
            _ => Ok(CancelSettlement::Settled),
        }
    }

    async fn settle(
        &self,
        item: &WorkItem,
        payload: &EventPayload,
        at: Timestamp,
        dead_letter: Option<(&str, u32)>,
    ) -> Result<Option<u64>, StoreError> {
        let guard = format!("batch:{}", item.batch);
        self.append(&Append {
            action: item.action_id,
            guard: &guard,
            payload,
            at,
            settles: Some(item),
            dead_letter,
            condition: AppendCondition::Always,
        })
        .await
    }

    async fn append(&self, append: &Append<'_>) -> Result<Option<u64>, StoreError> {
        match self.append_script(append).await? {
            -1 => Err(StoreError::Corrupt(format!(
                "action {} has no meta",
                append.action
            ))),
            seq if seq <= 0 => Ok(None),
            seq => Ok(Some(seq as u64)),
        }
    }

    /// Runs `append_event.lua`; returns its raw answer (see the script).
    async fn append_script(&self, append: &Append<'_>) -> Result<i64, StoreError> {
        let Append {
            action,
            guard,
            payload,
            at,
            settles,
            dead_letter,
            condition,
        } = *append;
        let partition = self.keys.partition_of(action);
        let completed = EventPayload::Completed {};
        let seq: i64 = self
            .scripts
            .append_event
            .key(self.keys.meta(action))
            .key(self.keys.events(action))
            .key(self.keys.feed(partition))
            .key(self.keys.batches(action))
            .key(self.keys.work(partition))
            .key(self.keys.dead_letters(partition))
            .key(self.keys.hooks(partition))
            .arg(action.to_string())
            .arg(guard)
            .arg(SCHEMA_VERSION)
            .arg(Ulid::new().to_string())
            .arg(payload.type_name())
            .arg(at.to_string())
            .arg(payload.data_json())
            .arg(if settles.is_some() { "1" } else { "0" })
            .arg(Ulid::new().to_string())
            .arg(completed.type_name())
            .arg(completed.data_json())
            .arg(settles.map(|item| item.batch).unwrap_or_default())
            .arg(
                settles
                    .map(|item| item.entry_id.as_str())
                    .unwrap_or_default(),
            )
            .arg(CONSUMER_GROUP)
            .arg(dead_letter.map(|(error, _)| error).unwrap_or_default())
            .arg(
                dead_letter
                    .map(|(_, attempts)| attempts)
                    .unwrap_or_default(),
            )
            .arg(match condition {
                AppendCondition::Always => "",
                AppendCondition::Unattempted => "1",
            })
            .arg(kept_bytes(payload))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(seq)
    }

    /// A staged or queued batch; `None` once it has been applied and removed.
    pub async fn load_batch(
        &self,
        action: ActionId,
        batch: u32,
    ) -> Result<Option<Batch>, StoreError> {
        let raw: Option<String> = self
            .conn
            .clone()
            .hget(self.keys.batches(action), batch)
            .await?;
        raw.map(|json| serde_json::from_str(&json).map_err(StoreError::from))
            .transpose()
    }
}

impl Scheduling {
    /// Puts a scheduled action whose time has come in its account's queue. Returns false if
    /// another scheduler did.
    pub async fn release(&self, action: ActionId, at: Timestamp) -> Result<bool, StoreError> {
        let partition = self.keys.partition_of(action);
        let Some(account) = self.account_of(action).await? else {
            return Err(StoreError::Corrupt(format!(
                "scheduled action {action} has no meta"
            )));
        };
        let payload = EventPayload::Released {};
        let released: i64 = self
            .scripts
            .release_action
            .key(self.keys.schedule(partition))
            .key(self.keys.meta(action))
            .key(self.keys.events(action))
            .key(self.keys.feed(partition))
            .key(self.keys.account_queue(partition, &account))
            .key(self.keys.ready(partition))
            .key(self.keys.dispatch(partition))
            .key(self.keys.hooks(partition))
            .arg(action.to_string())
            .arg(SCHEMA_VERSION)
            .arg(Ulid::new().to_string())
            .arg(payload.type_name())
            .arg(at.to_string())
            .arg(payload.data_json())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(released == 1)
    }
}

impl Projection {
    /// Drops a finished action's events, batches and bookkeeping from Redis, once they are
    /// archived, and leaves a small tombstone meta (account, types, counts, `archived`) so
    /// that ownership checks, control commands (`action_finished`) and idempotent
    /// resubmissions still see the action. Refuses (false) unless the stream still ends at
    /// `archived_seq`: nothing may be dropped that the archive lacks.
    pub async fn forget_archived(
        &self,
        action: ActionId,
        archived_seq: u64,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let (forgotten, kept, account): (i64, u64, String) = self
            .scripts
            .forget_archived
            .key(self.keys.meta(action))
            .key(self.keys.events(action))
            .key(self.keys.batches(action))
            .key(self.keys.parked(action))
            .arg(archived_seq)
            .arg(at.millis())
            .invoke_async(&mut self.conn.clone())
            .await?;
        // Its kept records left Redis with it: its account may keep as much again.
        if let Ok(account) = domain::AccountId::parse(&account) {
            if let Err(error) = self.release_kept(&account, kept).await {
                tracing::warn!(%action, %error, kept, "could not release an archived action's kept records from its account's count");
            }
        }
        Ok(forgotten == 1)
    }
}

/// What the records an event keeps take (`SubmittedRecord::stored_size`).
fn kept_bytes(payload: &EventPayload) -> u64 {
    domain::results::kept_size(payload.submitted_records())
}
