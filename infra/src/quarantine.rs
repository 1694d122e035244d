//! Actions whose views the projector cannot write, kept per partition in
//! `P:{n}:quarantine` (action -> `ProjectionError` as JSON).
//!
//! The projector skips a quarantined action instead of retrying it forever, so one poison
//! action never stalls the others; `projector replay` clears the set and records again
//! whatever still fails. Operators list it with `HGETALL P:{n}:quarantine` (count:
//! `HLEN`) or `projector quarantined`.

use std::collections::BTreeSet;

use domain::{ActionId, ProjectionError};
use redis::AsyncCommands;

use crate::event_store::{EventStore, StoreError};
use crate::roles::Projection;

impl Projection {
    pub async fn quarantine(
        &self,
        action: ActionId,
        error: &ProjectionError,
    ) -> Result<(), StoreError> {
        let key = self.keys.quarantine(self.keys.partition_of(action));
        let _: () = self
            .conn
            .clone()
            .hset(key, action.to_string(), serde_json::to_string(error)?)
            .await?;
        Ok(())
    }

    /// Forgets every quarantined action of a partition (replay judges them all again).
    pub async fn clear_quarantine(&self, partition: u32) -> Result<(), StoreError> {
        let _: () = self
            .conn
            .clone()
            .del(self.keys.quarantine(partition))
            .await?;
        Ok(())
    }
}

impl EventStore {
    /// Why `action` is quarantined, if it is.
    pub async fn quarantined(
        &self,
        action: ActionId,
    ) -> Result<Option<ProjectionError>, StoreError> {
        let key = self.keys.quarantine(self.keys.partition_of(action));
        let raw: Option<String> = self.conn.clone().hget(key, action.to_string()).await?;
        Ok(raw.map(|raw| serde_json::from_str(&raw)).transpose()?)
    }

    /// Which of `actions` are quarantined; one round trip per partition (a pipeline stays
    /// in one hash slot, as a Redis Cluster requires).
    pub async fn quarantined_among(
        &self,
        actions: &BTreeSet<ActionId>,
    ) -> Result<BTreeSet<ActionId>, StoreError> {
        let mut by_partition: std::collections::BTreeMap<u32, Vec<ActionId>> = Default::default();
        for action in actions {
            by_partition
                .entry(self.keys.partition_of(*action))
                .or_default()
                .push(*action);
        }
        let mut quarantined = BTreeSet::new();
        for (partition, actions) in by_partition {
            let key = self.keys.quarantine(partition);
            let mut pipe = redis::pipe();
            for action in &actions {
                pipe.hexists(&key, action.to_string());
            }
            let flags: Vec<bool> = pipe.query_async(&mut self.conn.clone()).await?;
            quarantined.extend(
                actions
                    .into_iter()
                    .zip(flags)
                    .filter_map(|(action, flagged)| flagged.then_some(action)),
            );
        }
        Ok(quarantined)
    }

    /// Every quarantined action of a partition, with its reason.
    pub async fn quarantined_in(
        &self,
        partition: u32,
    ) -> Result<Vec<(ActionId, ProjectionError)>, StoreError> {
        let raw: Vec<(String, String)> = self
            .conn
            .clone()
            .hgetall(self.keys.quarantine(partition))
            .await?;
        raw.iter()
            .filter_map(|(action, error)| Some((ActionId::parse(action)?, error)))
            .map(|(action, error)| Ok((action, serde_json::from_str(error)?)))
            .collect()
    }
}
