//! What the records kept for result files take in Redis, per account: a bound one account
//! cannot pass however many actions it submits (`RESULT_KEPT_MAX_BYTES_PER_ACCOUNT`).
//!
//! Charged after a write that kept records (the api's commit, a consumer's settlement) and
//! released when retention archives an action, each a separate command rather than part
//! of the write's script: an action's keys and its account's may sit in different slots
//! after a repartition. A crash in between leaves the count a little low, never stuck:
//! the bound is a guard against filling Redis, not an exact ledger.

use domain::AccountId;
use redis::AsyncCommands;

use crate::event_store::{EventStore, StoreError};

impl EventStore {
    /// What the records kept by `account`'s actions take now, in bytes.
    pub async fn account_kept(&self, account: &AccountId) -> Result<u64, StoreError> {
        let raw: Option<i64> = self.conn.clone().get(self.keys.kept_bytes(account)).await?;
        Ok(raw.map_or(0, |bytes| u64::try_from(bytes).unwrap_or(0)))
    }

    /// Adds `bytes` to what `account` keeps.
    pub async fn charge_kept(&self, account: &AccountId, bytes: u64) -> Result<(), StoreError> {
        if bytes == 0 {
            return Ok(());
        }
        let _: i64 = self
            .conn
            .clone()
            .incr(self.keys.kept_bytes(account), bytes)
            .await?;
        Ok(())
    }

    /// Takes `bytes` off what `account` keeps (an archived action's), never below zero.
    pub async fn release_kept(&self, account: &AccountId, bytes: u64) -> Result<(), StoreError> {
        if bytes == 0 {
            return Ok(());
        }
        let key = self.keys.kept_bytes(account);
        let left: i64 = self
            .conn
            .clone()
            .decr(&key, i64::try_from(bytes).unwrap_or(i64::MAX))
            .await?;
        if left < 0 {
            let _: i64 = self.conn.clone().incr(&key, -left).await?;
        }
        Ok(())
    }

    /// Records on the meta what the records refused or skipped at submission keep, so that
    /// retention releases them with the rest (`keptBytes`).
    pub async fn note_kept_at_submission(
        &self,
        action: domain::ActionId,
        bytes: u64,
    ) -> Result<(), StoreError> {
        if bytes == 0 {
            return Ok(());
        }
        let _: i64 = self
            .conn
            .clone()
            .hincr(self.keys.meta(action), "keptBytes", bytes)
            .await?;
        Ok(())
    }
}
