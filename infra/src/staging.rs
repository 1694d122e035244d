//! A submission's batches and opening outcome events, written to Redis while its records
//! are still arriving, where no consumer or projector can see them.
//!
//! A streamed upload of a million records is planned a batch at a time and each batch is
//! staged as soon as it is full, so the api holds one batch, not the upload. Everything
//! staged expires unless `EventStore::commit_action` makes it part of an action, which it
//! does in one step: the action exists with all its records or not at all.

use domain::{AccountId, Planned};
use ulid::Ulid;

use crate::event_store::{EventStore, StoreError};
use crate::roles::Submissions;

/// How long staged data lives if its submission never commits.
const STAGED_TTL_SECS: i64 = 24 * 3600;

/// One submission's staging area, under a token of its own, so that a racing retry of the
/// same action stages apart.
pub struct Staging {
    store: EventStore,
    batches_key: String,
    events_key: String,
    staged_events: u32,
}

impl Staging {
    /// A fresh staging area in `account`'s partition, where its action will be minted.
    pub fn new(store: &Submissions, account: &AccountId) -> Self {
        let keys = store.keys();
        let partition = keys.account_partition(account);
        let token = Ulid::new().to_string();
        Self {
            batches_key: keys.staged_batches(partition, &token),
            events_key: keys.staged_events(partition, &token),
            store: EventStore::clone(store),
            staged_events: 0,
        }
    }

    pub fn batches_key(&self) -> &str {
        &self.batches_key
    }

    pub fn events_key(&self) -> &str {
        &self.events_key
    }

    /// Outcome events staged so far; `commit_action` checks that they are all still there.
    pub fn staged_events(&self) -> u32 {
        self.staged_events
    }

    /// Stages planned batches and outcome events in one round trip.
    pub async fn put(&mut self, planned: &[Planned]) -> Result<(), StoreError> {
        if planned.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let mut batches = Vec::new();
        for item in planned {
            match item {
                Planned::Batch(batch) => {
                    batches.push((batch.number, serde_json::to_string(batch)?));
                }
                Planned::Outcomes(event) => {
                    pipe.rpush(
                        &self.events_key,
                        &[
                            Ulid::new().to_string(),
                            event.type_name().to_owned(),
                            event.data_json(),
                        ],
                    )
                    .ignore();
                    self.staged_events += 1;
                }
            }
        }
        if !batches.is_empty() {
            pipe.hset_multiple(&self.batches_key, &batches).ignore();
        }
        pipe.expire(&self.batches_key, STAGED_TTL_SECS)
            .ignore()
            .expire(&self.events_key, STAGED_TTL_SECS)
            .ignore();
        pipe.exec_async(&mut self.store.connection()).await?;
        Ok(())
    }

    /// Drops what was staged: the submission was refused after it had started staging.
    pub async fn discard(self) -> Result<(), StoreError> {
        redis::pipe()
            .del(&self.batches_key)
            .ignore()
            .del(&self.events_key)
            .ignore()
            .exec_async(&mut self.store.connection())
            .await?;
        Ok(())
    }
}
