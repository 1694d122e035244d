//! Actions' event streams on Redis: the source of truth.
//!
//! Every write goes through one of three Lua scripts (see `lua/`), each atomic on one hash
//! slot. Reads return events with their stream position, which the projector keeps as its
//! checkpoint.

use std::sync::Arc;

use domain::{
    ActionId, ActionType, Batch, EntityType, EventEnvelope, EventPayload, RecordOutcome, Timestamp,
    SCHEMA_VERSION,
};
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Script};
use ulid::Ulid;

use crate::keys::{Keys, CONSUMER_GROUP};
use crate::scripts::with_library;
use crate::staging::Staging;
use crate::work::WorkItem;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("the staged batches of action {0} expired before it was committed")]
    StagingExpired(ActionId),
}

impl From<domain::event::DecodeError> for StoreError {
    fn from(error: domain::event::DecodeError) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

/// When `append_event.lua` may append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppendCondition {
    Always,
    /// Only if no attempt at the batch has begun.
    Unattempted,
}

/// How settling a batch of a cancelled action went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelSettlement {
    /// Settled unprocessed (or it had been settled already).
    Settled,
    /// An attempt at it has begun: apply it instead, to learn what that attempt wrote.
    Attempted,
}

/// An event as stored: its envelope and its position in the action's stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: String,
    pub envelope: EventEnvelope,
}

/// What the consumer needs to know about an action to apply its batches.
#[derive(Debug, Clone)]
pub struct ActionMeta {
    pub account_id: domain::AccountId,
    pub action_type: ActionType,
    pub entity_type: EntityType,
    pub head_seq: u64,
    /// A cancel was requested: batches not yet applied are settled as unprocessed.
    pub cancelled: bool,
    pub paused: bool,
    /// Its events were moved to the MongoDB archive (retention); only a tombstone is left.
    pub archived: bool,
}

/// Everything `commit_action` writes.
pub struct NewAction<'a> {
    pub action_id: ActionId,
    pub account_id: &'a domain::AccountId,
    pub action_type: ActionType,
    pub entity_type: EntityType,
    pub batch_count: u32,
    /// Records per batch (every batch but the last is full).
    pub batch_size: u32,
    /// Records in all batches together; what the processing budget is charged.
    pub records_in_batches: u32,
    /// The action's own pace, below its account's limit.
    pub pace: Option<domain::pacing::Bucket>,
    /// `None` starts now.
    pub start_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// The opening events, in order; `Created` first. The staged outcome events go in
    /// right after it.
    pub events: Vec<EventPayload>,
    /// Where this submission staged its batches and outcome events.
    pub staging: &'a Staging,
}

/// Whether `commit_action` made the action exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Created,
    /// It existed already: another submission with the same idempotency key won.
    AlreadyExisted,
}

/// A batch that failed every allowed attempt.
pub struct DeadLetter {
    pub attempts: u32,
    pub error: String,
    /// One `dead_lettered` outcome per record of the batch.
    pub outcomes: Vec<RecordOutcome>,
}

pub(crate) struct Scripts {
    commit_action: Script,
    append_event: Script,
    release_action: Script,
    pub(crate) dispatch: Script,
    pub(crate) control: Script,
    pub(crate) park: Script,
    pub(crate) amend: Script,
    pub(crate) request_budget: Script,
    pub(crate) set_limits: Script,
    pub(crate) open_action: Script,
    forget_archived: Script,
}

#[derive(Clone)]
pub struct EventStore {
    pub(crate) conn: ConnectionManager,
    pub(crate) keys: Keys,
    pub(crate) scripts: Arc<Scripts>,
}

impl EventStore {
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        let scripts = Scripts {
            commit_action: with_library(include_str!("lua/commit_action.lua")),
            append_event: with_library(include_str!("lua/append_event.lua")),
            release_action: with_library(include_str!("lua/release_action.lua")),
            dispatch: with_library(include_str!("lua/dispatch.lua")),
            control: with_library(include_str!("lua/control.lua")),
            park: with_library(include_str!("lua/park.lua")),
            amend: with_library(include_str!("lua/amend.lua")),
            request_budget: with_library(include_str!("lua/request_budget.lua")),
            set_limits: with_library(include_str!("lua/set_limits.lua")),
            open_action: with_library(include_str!("lua/open_action.lua")),
            forget_archived: with_library(include_str!("lua/forget_archived.lua")),
        };
        Self {
            conn,
            keys,
            scripts: Arc::new(scripts),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Makes the action exist, unless it already did (a retried submission).
    pub async fn commit_action(&self, new: &NewAction<'_>) -> Result<Commit, StoreError> {
        let action = new.action_id;
        let partition = self.keys.partition_of(action);
        let mut invocation = self.scripts.commit_action.prepare_invoke();
        invocation
            .key(self.keys.meta(action))
            .key(self.keys.events(action))
            .key(self.keys.feed(partition))
            .key(self.keys.batches(action))
            .key(self.keys.account_queue(partition, new.account_id))
            .key(self.keys.schedule(partition))
            .key(self.keys.actions(partition))
            .key(new.staging.batches_key())
            .key(self.keys.ready(partition))
            .key(new.staging.events_key())
            .key(self.keys.opening(partition))
            .arg(action.to_string())
            .arg(new.account_id.as_str())
            .arg(new.action_type.as_str())
            .arg(new.entity_type.as_str())
            .arg(new.batch_count)
            .arg(
                new.start_at
                    .map(|at| at.millis().to_string())
                    .unwrap_or_default(),
            )
            .arg(new.created_at.millis())
            .arg(SCHEMA_VERSION)
            .arg(new.batch_size)
            .arg(new.records_in_batches)
            .arg(
                new.pace
                    .map(|pace| pace.emission_ms.to_string())
                    .unwrap_or_default(),
            )
            .arg(new.pace.map(|pace| pace.burst).unwrap_or_default())
            .arg(new.staging.staged_events())
            .arg(new.events.len());
        for payload in &new.events {
            invocation
                .arg(Ulid::new().to_string())
                .arg(payload.type_name())
                .arg(new.created_at.to_string())
                .arg(payload.data_json());
        }
        invocation.arg(new.created_at.millis() + crate::opening::TAKE_OVER_AFTER_MS);
        let created: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        match created {
            1 => Ok(Commit::Created),
            2 => {
                // The action exists from here on: a failure to move the rest in is left to
                // the schedulers' takeover, never reported as a failed commit (whose
                // caller would discard the staged events the opening still needs).
                if let Err(error) = self.finish_opening(action).await {
                    tracing::warn!(%action, %error, "could not finish opening; a scheduler will");
                }
                Ok(Commit::Created)
            }
            0 => Ok(Commit::AlreadyExisted),
            _ => Err(StoreError::StagingExpired(action)),
        }
    }

    /// Reserves `key` for `value` unless it is taken; returns the value that holds it
    /// (`None`: this call reserved it).
    pub async fn reserve(
        &self,
        key: &str,
        value: &str,
        ttl_secs: u64,
    ) -> Result<Option<String>, StoreError> {
        // `SET NX GET` (Redis 7.0) reserves and reads the holder in one atomic step.
        let holder: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(ttl_secs)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(holder)
    }

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

    /// The value holding a key reserved with `reserve`.
    pub async fn holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn.clone().get(key).await?)
    }

    /// Counts one more attempt at a batch and returns its number (1 for the first).
    /// Counted before the attempt, so attempts that crash their consumer count too.
    pub async fn begin_attempt(&self, item: &WorkItem) -> Result<u32, StoreError> {
        let attempt: u32 = self
            .conn
            .clone()
            .hincr(
                self.keys.meta(item.action_id),
                format!("attempts:{}", item.batch),
                1,
            )
            .await?;
        Ok(attempt)
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
        self.append(
            action,
            guard,
            payload,
            at,
            None,
            None,
            AppendCondition::Always,
        )
        .await
    }

    /// Records a batch's outcomes and retires its work item in one step; appends
    /// `Completed` if it was the action's last batch. Safe to repeat: only the first
    /// settlement of a batch is recorded.
    pub async fn settle_batch(
        &self,
        item: &WorkItem,
        outcomes: Vec<RecordOutcome>,
        consumer: &str,
        attempt: u32,
        at: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let payload = EventPayload::BatchProcessed {
            batch: item.batch,
            outcomes,
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
        at: Timestamp,
    ) -> Result<CancelSettlement, StoreError> {
        let payload = EventPayload::BatchCancelled {
            batch: item.batch,
            outcomes,
        };
        let guard = format!("batch:{}", item.batch);
        let code = self
            .append_script(
                item.action_id,
                &guard,
                &payload,
                at,
                Some(item),
                None,
                AppendCondition::Unattempted,
            )
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
        self.append(
            item.action_id,
            &guard,
            payload,
            at,
            Some(item),
            dead_letter,
            AppendCondition::Always,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        action: ActionId,
        guard: &str,
        payload: &EventPayload,
        at: Timestamp,
        settles: Option<&WorkItem>,
        dead_letter: Option<(&str, u32)>,
        condition: AppendCondition,
    ) -> Result<Option<u64>, StoreError> {
        let seq = self
            .append_script(action, guard, payload, at, settles, dead_letter, condition)
            .await?;
        match seq {
            -1 => Err(StoreError::Corrupt(format!("action {action} has no meta"))),
            seq if seq <= 0 => Ok(None),
            seq => Ok(Some(seq as u64)),
        }
    }

    /// Runs `append_event.lua`; returns its raw answer (see the script).
    #[allow(clippy::too_many_arguments)]
    async fn append_script(
        &self,
        action: ActionId,
        guard: &str,
        payload: &EventPayload,
        at: Timestamp,
        settles: Option<&WorkItem>,
        dead_letter: Option<(&str, u32)>,
        condition: AppendCondition,
    ) -> Result<i64, StoreError> {
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
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(seq)
    }

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

    /// Up to `count` events after stream position `after` (from the start when `None`).
    pub async fn read(
        &self,
        action: ActionId,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_raw(action, after, count)
            .await?
            .iter()
            .map(|raw| raw.decode(action))
            .collect()
    }

    /// `read`, without decoding.
    pub async fn read_raw(
        &self,
        action: ActionId,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<RawEvent>, StoreError> {
        let start = after.map_or_else(|| "-".to_owned(), |position| format!("({position}"));
        let reply: StreamRangeReply = self
            .conn
            .clone()
            .xrange_count(self.keys.events(action), start, "+", count)
            .await?;
        reply
            .ids
            .into_iter()
            .map(|entry| raw_event(action, entry))
            .collect()
    }

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
        let forgotten: i64 = self
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
        Ok(forgotten == 1)
    }

    pub async fn meta(&self, action: ActionId) -> Result<Option<ActionMeta>, StoreError> {
        // The named fields only: the hash also holds a guard and an attempt counter per
        // batch, thousands of fields for a large action, read by every batch otherwise.
        const FIELDS: [&str; 7] = [
            "account",
            "actionType",
            "entityType",
            "seq",
            "cancelled",
            "paused",
            "archived",
        ];
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.meta(action))
            .arg(&FIELDS[..])
            .query_async(&mut self.conn.clone())
            .await?;
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        let field = |name: &str| {
            FIELDS
                .iter()
                .position(|known| *known == name)
                .and_then(|at| values.get(at))
                .and_then(Option::as_deref)
        };
        let required = |name: &str| {
            field(name).ok_or_else(|| StoreError::Corrupt(format!("meta of {action} lacks {name}")))
        };
        let corrupt = |name: &str| StoreError::Corrupt(format!("meta of {action}: bad {name}"));
        Ok(Some(ActionMeta {
            account_id: domain::AccountId::parse(required("account")?)
                .map_err(|_| corrupt("account"))?,
            action_type: ActionType::parse(required("actionType")?)
                .ok_or_else(|| corrupt("actionType"))?,
            entity_type: EntityType::parse(required("entityType")?)
                .ok_or_else(|| corrupt("entityType"))?,
            head_seq: required("seq")?.parse().map_err(|_| corrupt("seq"))?,
            cancelled: field("cancelled") == Some("1"),
            paused: field("paused") == Some("1"),
            archived: field("archived") == Some("1"),
        }))
    }

    /// The account an action belongs to; `None` for an unknown action.
    pub async fn account_of(
        &self,
        action: ActionId,
    ) -> Result<Option<domain::AccountId>, StoreError> {
        let raw: Option<String> = self
            .conn
            .clone()
            .hget(self.keys.meta(action), "account")
            .await?;
        raw.map(|raw| {
            domain::AccountId::parse(&raw)
                .map_err(|_| StoreError::Corrupt(format!("meta of {action}: bad account")))
        })
        .transpose()
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

    /// Every action id in a partition, oldest first.
    pub async fn actions_in(&self, partition: u32) -> Result<Vec<ActionId>, StoreError> {
        let raw: Vec<String> = self
            .conn
            .clone()
            .zrange(self.keys.actions(partition), 0, -1)
            .await?;
        raw.iter()
            .map(|id| {
                ActionId::parse(id).ok_or_else(|| StoreError::Corrupt(format!("action id {id}")))
            })
            .collect()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

/// An event as the stream holds it, not yet decoded: what the archive keeps, so that a
/// replay from the archive decodes (and upcasts) exactly as a replay from Redis does.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawEvent {
    pub position: String,
    pub event_id: String,
    pub seq: u64,
    pub schema_version: u16,
    #[serde(rename = "type")]
    pub type_name: String,
    pub at: String,
    pub data: String,
}

impl RawEvent {
    pub fn decode(&self, action: ActionId) -> Result<StoredEvent, StoreError> {
        let corrupt = |name: &str| {
            StoreError::Corrupt(format!("event {} of {action}: bad {name}", self.position))
        };
        let envelope = EventEnvelope {
            event_id: self.event_id.parse().map_err(|_| corrupt("id"))?,
            action_id: action,
            seq: self.seq,
            schema_version: self.schema_version,
            occurred_at: Timestamp::parse_rfc3339(&self.at).ok_or_else(|| corrupt("at"))?,
            payload: EventPayload::decode(&self.type_name, self.schema_version, &self.data)?,
        };
        Ok(StoredEvent {
            position: self.position.clone(),
            envelope,
        })
    }
}

fn raw_event(action: ActionId, entry: redis::streams::StreamId) -> Result<RawEvent, StoreError> {
    let text = |name: &str| -> Result<String, StoreError> {
        entry.get::<String>(name).ok_or_else(|| {
            StoreError::Corrupt(format!("event {} of {action} lacks {name}", entry.id))
        })
    };
    let corrupt =
        |name: &str| StoreError::Corrupt(format!("event {} of {action}: bad {name}", entry.id));
    let stream_action = ActionId::parse(&text("action")?).ok_or_else(|| corrupt("action"))?;
    if stream_action != action {
        return Err(corrupt("action"));
    }
    Ok(RawEvent {
        event_id: text("id")?,
        seq: text("seq")?.parse().map_err(|_| corrupt("seq"))?,
        schema_version: text("v")?.parse().map_err(|_| corrupt("v"))?,
        type_name: text("type")?,
        at: text("at")?,
        data: text("data")?,
        position: entry.id,
    })
}
