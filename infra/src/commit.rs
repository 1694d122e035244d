//! What the api writes to make an action exist: the commit of a staged submission, and
//! the reservation of an `Idempotency-Key`.

use domain::{ActionId, ActionType, EntityType, EventPayload, Timestamp, SCHEMA_VERSION};
use redis::AsyncCommands;
use ulid::Ulid;

use crate::event_store::StoreError;
use crate::roles::Submissions;
use crate::staging::Staging;

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

impl NewAction<'_> {
    /// The pace its `Created` records, which the meta keeps for changes of pace.
    fn own_pace(&self) -> domain::lifecycle::Pace {
        self.events
            .first()
            .and_then(domain::lifecycle::Pace::recorded_by)
            .unwrap_or_default()
    }
}

/// Whether `commit_action` made the action exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Created,
    /// It existed already: another submission with the same idempotency key won.
    AlreadyExisted,
}

impl Submissions {
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
            .key(self.keys.dispatch(partition))
            .key(self.keys.hooks(partition))
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
        invocation.arg(new.own_pace().to_json());
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

    /// The value holding a key reserved with `reserve`.
    pub async fn holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn.clone().get(key).await?)
    }
}
