//! Finishing an action's opening: the staged outcome events that `commit_action.lua` did
//! not move in one go (it moves a slice at a time, so no call blocks Redis for long). The
//! api that committed the action finishes it before answering; if that api dies first, any
//! consumer's scheduler takes over once the action has waited `TAKE_OVER_AFTER_MS`.

use domain::{ActionId, EventPayload, Timestamp, SCHEMA_VERSION};
use redis::AsyncCommands;
use ulid::Ulid;

use crate::event_store::{EventStore, StoreError};
use crate::roles::Scheduling;

/// How long an opening is left to its api before a sweeper finishes it.
pub const TAKE_OVER_AFTER_MS: i64 = 30_000;

impl EventStore {
    /// Moves the rest of an opening action's staged events in, slice by slice, and opens
    /// it (queued, scheduled or completed). Nothing to do for an action that is open.
    pub(crate) async fn finish_opening(&self, action: ActionId) -> Result<(), StoreError> {
        let partition = self.keys.partition_of(action);
        let staged: Option<String> = self
            .conn
            .clone()
            .hget(self.keys.meta(action), "opening")
            .await?;
        let (Some(staged), Some(account)) = (staged, self.account_of(action).await?) else {
            // Open already (or gone): it must not stay in the takeover set.
            let _: () = self
                .conn
                .clone()
                .zrem(self.keys.opening(partition), action.to_string())
                .await?;
            return Ok(());
        };
        let completed = EventPayload::Completed {};
        loop {
            let at = crate::clock::now();
            let step: i64 = self
                .scripts
                .open_action
                .key(self.keys.meta(action))
                .key(self.keys.events(action))
                .key(self.keys.feed(partition))
                .key(&staged)
                .key(self.keys.account_queue(partition, &account))
                .key(self.keys.schedule(partition))
                .key(self.keys.ready(partition))
                .key(self.keys.opening(partition))
                .key(self.keys.dispatch(partition))
                .key(self.keys.hooks(partition))
                .arg(action.to_string())
                .arg(SCHEMA_VERSION)
                .arg(at.to_string())
                .arg(Ulid::new().to_string())
                .arg(completed.type_name())
                .arg(completed.data_json())
                .invoke_async(&mut self.conn.clone())
                .await?;
            if step != 2 {
                return Ok(());
            }
        }
    }
}

impl Scheduling {
    /// Finishes the openings of one partition whose api has left them for too long;
    /// returns how many it finished.
    pub async fn finish_abandoned_openings(
        &self,
        partition: u32,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        let due: Vec<String> = self
            .conn
            .clone()
            .zrangebyscore_limit(self.keys.opening(partition), "-inf", now.millis(), 0, 8)
            .await?;
        let mut finished = 0;
        for action in due.iter().filter_map(|raw| ActionId::parse(raw)) {
            self.finish_opening(action).await?;
            finished += 1;
        }
        Ok(finished)
    }
}
