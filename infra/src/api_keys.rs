//! API keys in Redis. A key is stored only as the SHA-256 of its secret, under its id;
//! the secret itself is shown once, when it is made, and never stored.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:apikey:<keyId>` | hash | `account`, `digest` (hex SHA-256 of the secret), `createdAt` |
//! | `P:apikeys:<account>` | zset | the account's key ids by creation time (ms) |
//!
//! The two live in different hash slots (a key is found by its id, a list by its account),
//! so on a Redis Cluster they cannot change in one transaction. They change in an order
//! that any crash leaves harmless: an id is listed before its key exists, and a revoked
//! key is gone before it is unlisted; a listed id without a key is not shown. On a cluster
//! a revocation is answered once a replica holds it (waiting 2 s at most).

use domain::{AccountId, Timestamp};
use redis::AsyncCommands;

use crate::event_store::{EventStore, StoreError};
use crate::redis_conn::Shared;
use crate::roles::AccountAdmin;

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key_id: String,
    pub account: AccountId,
    /// Hex SHA-256 of the secret.
    pub digest: String,
    pub created_at: Timestamp,
}

impl EventStore {
    fn api_key_key(&self, key_id: &str) -> String {
        format!("{}:apikey:{key_id}", self.keys.prefix())
    }

    fn account_keys_key(&self, account: &AccountId) -> String {
        format!("{}:apikeys:{account}", self.keys.prefix())
    }
}

impl AccountAdmin {
    pub async fn store_api_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .zadd(
                self.account_keys_key(&key.account),
                &key.key_id,
                key.created_at.millis(),
            )
            .await?;
        let _: () = conn
            .hset_multiple(
                self.api_key_key(&key.key_id),
                &[
                    ("account", key.account.as_str().to_owned()),
                    ("digest", key.digest.clone()),
                    ("createdAt", key.created_at.to_string()),
                ],
            )
            .await?;
        Ok(())
    }

    /// Removes an account's key; false when the account has no such key.
    pub async fn revoke_api_key(
        &self,
        account: &AccountId,
        key_id: &str,
    ) -> Result<bool, StoreError> {
        match self.api_key(key_id).await? {
            Some(key) if &key.account == account => {
                let mut conn = self.conn.clone();
                let _: () = conn.del(self.api_key_key(key_id)).await?;
                let _: () = conn.zrem(self.account_keys_key(account), key_id).await?;
                self.wait_for_a_replica(&mut conn, "the revocation").await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl AccountAdmin {
    /// On a cluster, waits (a bounded time) until a replica of every master holds this
    /// connection's writes, so that a failover does not bring back a revoked key (decision
    /// 0047). Revocations are rare, so they can pay the round trip that settlements do not.
    /// A cluster without replicas has no failover to fear, and never gets an acknowledgement:
    /// then the wait runs out, is logged, and the revocation stands.
    async fn wait_for_a_replica(&self, conn: &mut Shared, what: &str) -> Result<(), StoreError> {
        if let Shared::Cluster(_) = conn {
            let replicas: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(REPLICA_WAIT_MS)
                .query_async(conn)
                .await?;
            if replicas < 1 {
                tracing::warn!(what, "no replica acknowledged within {REPLICA_WAIT_MS} ms");
            }
        }
        Ok(())
    }
}

/// How long a revocation waits for replicas.
const REPLICA_WAIT_MS: u64 = 2_000;

impl EventStore {
    pub async fn api_key(&self, key_id: &str) -> Result<Option<StoredKey>, StoreError> {
        let fields: std::collections::HashMap<String, String> =
            self.conn.clone().hgetall(self.api_key_key(key_id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let corrupt = || StoreError::Corrupt(format!("api key {key_id} is malformed"));
        Ok(Some(StoredKey {
            key_id: key_id.to_owned(),
            account: fields
                .get("account")
                .and_then(|raw| AccountId::parse(raw).ok())
                .ok_or_else(corrupt)?,
            digest: fields.get("digest").cloned().ok_or_else(corrupt)?,
            created_at: fields
                .get("createdAt")
                .and_then(|raw| Timestamp::parse_rfc3339(raw))
                .ok_or_else(corrupt)?,
        }))
    }

    /// The account's live keys, oldest first.
    pub async fn api_keys_of(&self, account: &AccountId) -> Result<Vec<StoredKey>, StoreError> {
        let ids: Vec<String> = self
            .conn
            .clone()
            .zrange(self.account_keys_key(account), 0, -1)
            .await?;
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(key) = self.api_key(&id).await? {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}
