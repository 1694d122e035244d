//! Actions' event streams on Redis: the source of truth.
//!
//! Every write goes through a Lua script (see `lua/`), each atomic on one hash slot: the
//! api's in `commit`, the consumers' in `settlement`, commands in `lifecycle`. Reads (here)
//! return events with their stream position, which the projector keeps as its checkpoint.

use crate::redis_conn::Shared;
use std::sync::Arc;

use domain::{ActionId, ActionType, EntityType, EventEnvelope, EventPayload, Timestamp};
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Script};

pub use crate::commit::{Commit, NewAction};
use crate::keys::Keys;
use crate::scripts::with_library;
pub use crate::settlement::{CancelSettlement, DeadLetter};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("the staged batches of action {0} expired before it was committed")]
    StagingExpired(ActionId),
    /// Commands on the action kept changing its facts under each decision.
    #[error("action {0} changed under every decision; retry")]
    Contended(ActionId),
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

/// An event as stored: its envelope and its position in the action's stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: String,
    pub envelope: EventEnvelope,
}

/// The most bytes of events one read returns (past its first event): readers hold a page
/// whole, and a page of settled batches could otherwise be hundreds of megabytes.
pub const PAGE_MAX_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy)]
enum Direction {
    Forward,
    Backward,
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
    /// What the records its events keep take (`keptBytes`).
    pub kept_bytes: u64,
    /// Every batch is settled, so `Completed` is in the stream (an action of no batch is
    /// settled at once).
    pub settled: bool,
}

impl ActionMeta {
    /// What its batches do now (`domain::lifecycle::BatchTurn`).
    pub fn batch_turn(&self) -> domain::lifecycle::BatchTurn {
        domain::lifecycle::Facts {
            cancelled: self.cancelled,
            paused: self.paused,
            ..Default::default()
        }
        .batch_turn()
    }

    /// The room the kept records of its next settled batch have, given what its account
    /// keeps (`account_kept`) and may keep (`account_limit`) (`domain::results::batch_room`).
    pub fn kept_room(&self, account_kept: u64, account_limit: u64) -> usize {
        domain::results::batch_room(self.kept_bytes, account_kept, account_limit)
    }
}

pub(crate) struct Scripts {
    pub(crate) commit_action: Script,
    pub(crate) append_event: Script,
    pub(crate) release_action: Script,
    pub(crate) dispatch: Script,
    pub(crate) control: Script,
    pub(crate) park: Script,
    pub(crate) begin_attempt: Script,
    pub(crate) amend: Script,
    pub(crate) request_budget: Script,
    pub(crate) set_limits: Script,
    pub(crate) open_action: Script,
    pub(crate) forget_archived: Script,
    pub(crate) record_retry: Script,
    pub(crate) read_page: Script,
}

#[derive(Clone)]
pub struct EventStore {
    pub(crate) conn: Shared,
    pub(crate) keys: Keys,
    pub(crate) scripts: Arc<Scripts>,
}

impl EventStore {
    pub fn new(conn: Shared, keys: Keys) -> Self {
        let scripts = Scripts {
            commit_action: with_library(include_str!("lua/commit_action.lua")),
            append_event: with_library(include_str!("lua/append_event.lua")),
            release_action: with_library(include_str!("lua/release_action.lua")),
            dispatch: with_library(include_str!("lua/dispatch.lua")),
            control: with_library(include_str!("lua/control.lua")),
            park: with_library(include_str!("lua/park.lua")),
            begin_attempt: with_library(include_str!("lua/begin_attempt.lua")),
            amend: with_library(include_str!("lua/amend.lua")),
            request_budget: with_library(include_str!("lua/request_budget.lua")),
            set_limits: with_library(include_str!("lua/set_limits.lua")),
            open_action: with_library(include_str!("lua/open_action.lua")),
            forget_archived: with_library(include_str!("lua/forget_archived.lua")),
            record_retry: with_library(include_str!("lua/record_retry.lua")),
            read_page: with_library(include_str!("lua/read_page.lua")),
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

    pub fn connection(&self) -> Shared {
        self.conn.clone()
    }

    /// Up to `count` events after stream position `after` (from the start when `None`),
    /// fewer when they would pass `PAGE_MAX_BYTES`: only an empty page means the end.
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
        self.read_page(action, start, count, Direction::Forward)
            .await
    }

    /// Up to `count` events before stream position `before` (from the end when `None`),
    /// newest first, fewer when they would pass `PAGE_MAX_BYTES` (only an empty page means
    /// the start): what a resuming live stream reads to find the events after a seq.
    pub async fn read_back_raw(
        &self,
        action: ActionId,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<RawEvent>, StoreError> {
        let end = before.map_or_else(|| "+".to_owned(), |position| format!("({position}"));
        self.read_page(action, end, count, Direction::Backward)
            .await
    }

    /// `read_page.lua`: a page bounded by bytes as well as by events, however large the
    /// events (a settled batch's may carry megabytes of kept records).
    async fn read_page(
        &self,
        action: ActionId,
        from: String,
        count: usize,
        direction: Direction,
    ) -> Result<Vec<RawEvent>, StoreError> {
        let reply: StreamRangeReply = self
            .scripts
            .read_page
            .key(self.keys.events(action))
            .arg(from)
            .arg(count.max(1))
            .arg(PAGE_MAX_BYTES)
            .arg(match direction {
                Direction::Forward => "forward",
                Direction::Backward => "backward",
            })
            .invoke_async(&mut self.conn.clone())
            .await?;
        raw_events(action, reply.ids)
    }

    /// The actions of a partition created at or after `since_ms` (by the clock of the api
    /// that accepted them), newest first, at most `limit`, each with its account.
    pub async fn recent_actions(
        &self,
        partition: u32,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<(ActionId, domain::AccountId)>, StoreError> {
        let actions = self.recent_action_ids(partition, since_ms, limit).await?;
        self.accounts_of(&actions).await
    }

    /// `recent_actions` without their accounts.
    pub async fn recent_action_ids(
        &self,
        partition: u32,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<ActionId>, StoreError> {
        let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(self.keys.actions(partition))
            .arg("+inf")
            .arg(since_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(ids.iter().filter_map(|id| ActionId::parse(id)).collect())
    }

    /// The accounts of `actions` (all of one partition), in one round trip; an unknown
    /// action is left out.
    pub async fn accounts_of(
        &self,
        actions: &[ActionId],
    ) -> Result<Vec<(ActionId, domain::AccountId)>, StoreError> {
        if actions.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip: every meta of a partition shares its hash slot.
        let mut pipe = redis::pipe();
        for action in actions {
            pipe.hget(self.keys.meta(*action), "account");
        }
        let accounts: Vec<Option<String>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(actions
            .iter()
            .zip(accounts)
            .filter_map(|(action, account)| {
                let account = domain::AccountId::parse(&account?).ok()?;
                Some((*action, account))
            })
            .collect())
    }

    pub async fn meta(&self, action: ActionId) -> Result<Option<ActionMeta>, StoreError> {
        // The named fields only: the hash also holds a guard and an attempt counter per
        // batch, thousands of fields for a large action, read by every batch otherwise.
        const FIELDS: [&str; 10] = [
            "account",
            "actionType",
            "entityType",
            "seq",
            "cancelled",
            "paused",
            "archived",
            "keptBytes",
            "done",
            "batches",
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
            kept_bytes: field("keptBytes")
                .map_or(Ok(0), str::parse)
                .map_err(|_| corrupt("keptBytes"))?,
            settled: field("done").unwrap_or("0") == field("batches").unwrap_or("0"),
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

pub(crate) fn raw_events(
    action: ActionId,
    entries: Vec<redis::streams::StreamId>,
) -> Result<Vec<RawEvent>, StoreError> {
    entries
        .into_iter()
        .map(|entry| raw_event(action, entry))
        .collect()
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
