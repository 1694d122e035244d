//! The api's record, on an action, of a retry of its records (`lua/record_retry.lua`).

use domain::{ActionId, EventPayload, Timestamp, SCHEMA_VERSION};
use ulid::Ulid;

use crate::event_store::StoreError;
use crate::roles::Submissions;

/// What recording a retry on its original did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRecorded {
    /// Appended now, or by an earlier call for the same retry.
    Recorded,
    UnknownAction,
    /// The original's events are archived: nothing can be appended to it.
    Archived,
}

impl Submissions {
    /// Appends `RetryCreated { retry }` to `original`'s stream unless it is there already.
    pub async fn record_retry(
        &self,
        original: ActionId,
        retry: ActionId,
        api_key_id: Option<String>,
        at: Timestamp,
    ) -> Result<RetryRecorded, StoreError> {
        let partition = self.keys.partition_of(original);
        let payload = EventPayload::RetryCreated { retry, api_key_id };
        let answer: i64 = self
            .scripts
            .record_retry
            .key(self.keys.meta(original))
            .key(self.keys.events(original))
            .key(self.keys.feed(partition))
            .key(self.keys.hooks(partition))
            .arg(original.to_string())
            .arg(retry.to_string())
            .arg(SCHEMA_VERSION)
            .arg(Ulid::new().to_string())
            .arg(payload.type_name())
            .arg(at.to_string())
            .arg(payload.data_json())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match answer {
            -1 => RetryRecorded::UnknownAction,
            -3 => RetryRecorded::Archived,
            _ => RetryRecorded::Recorded,
        })
    }
}
