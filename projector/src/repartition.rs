//! Changing `STREAM_PARTITIONS` on a drained deployment.
//!
//! The partition count is part of every key name (`P:{n}:…`), so a new count needs the
//! keys of finished actions moved to where the new count looks for them: each action's
//! events and meta, its entry in its partition's `actions` set, and each account's limit
//! overrides, idempotency reservations, field definitions, external id slots and webhook
//! endpoints (with their deliveries and the attempts due). Keys
//! move with `DUMP` + `RESTORE` + `DEL`, which works across Redis Cluster slots, one key
//! at a time; an action is added to its new `actions` set before it leaves
//! the old one, so an interrupted run can simply be run again.

use domain::{AccountId, ActionId, EntityType};
use infra::redis_conn::Shared;
use infra::Keys;
use redis::AsyncCommands;

use crate::ProjectorError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepartitionReport {
    pub actions: usize,
    pub keys_moved: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RepartitionError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the deployment is not drained: {0}")]
    NotDrained(String),
    #[error("{0}")]
    Projector(#[from] ProjectorError),
    /// It finds keys with `SCAN`, which sees one node of a cluster.
    #[error("repartition on a Redis Cluster is not supported yet; see docs/operations.md")]
    OnACluster,
}

/// Moves every finished action's keys from `from`'s partitions to `to`'s. Refuses while any
/// action is scheduled, queued or has work in flight.
pub async fn repartition(
    conn: &mut Shared,
    from: &Keys,
    to: &Keys,
) -> Result<RepartitionReport, RepartitionError> {
    if matches!(conn, Shared::Cluster(_)) {
        return Err(RepartitionError::OnACluster);
    }
    ensure_drained(conn, from).await?;
    let mut report = RepartitionReport::default();
    // All of them first: an action moved to a partition number still to be walked would
    // otherwise be met twice.
    let mut actions = Vec::new();
    for partition in from.partitions() {
        let listed: Vec<(String, f64)> = conn
            .zrange_withscores(from.actions(partition), 0, -1)
            .await?;
        actions.extend(
            listed
                .into_iter()
                .map(|(raw, created)| (partition, raw, created)),
        );
    }
    for (partition, raw, created) in actions {
        let Some(action) = ActionId::parse(&raw) else {
            continue;
        };
        for (old, new) in [
            (from.events(action), to.events(action)),
            (from.meta(action), to.meta(action)),
            (from.batches(action), to.batches(action)),
            (from.parked(action), to.parked(action)),
        ] {
            if move_key(conn, &old, &new).await? {
                report.keys_moved += 1;
            }
        }
        let (old_set, new_set) = (from.actions(partition), to.actions(to.partition_of(action)));
        if old_set != new_set {
            let _: () = conn.zadd(&new_set, &raw, created).await?;
            let _: () = conn.zrem(&old_set, &raw).await?;
        }
        report.actions += 1;
    }
    let pattern = format!("{}:{{*}}:limits:*", from.prefix());
    for old in scan(conn, &pattern).await? {
        let Some(account) = named_account(from, &old, "limits")
            .filter(|account| from.limits(from.account_partition(account), account) == old)
        else {
            tracing::warn!(key = old, "not an account's limits key; left as it is");
            continue;
        };
        let new = to.limits(to.account_partition(&account), &account);
        if move_key(conn, &old, &new).await? {
            report.keys_moved += 1;
        }
    }
    // What an account's kept records take, counted beside its account.
    for old in scan(conn, &format!("{}:{{*}}:kept:*", from.prefix())).await? {
        let Some(account) =
            named_account(from, &old, "kept").filter(|account| from.kept_bytes(account) == old)
        else {
            tracing::warn!(key = old, "not an account's kept-bytes key; left as it is");
            continue;
        };
        if move_key(conn, &old, &to.kept_bytes(&account)).await? {
            report.keys_moved += 1;
        }
    }
    // An account's field definitions and external id slots, by account and entity type.
    for (kind, new_key) in [
        (
            "fields",
            Keys::field_definitions as fn(&Keys, &AccountId, EntityType) -> String,
        ),
        ("slots", Keys::external_id_slots),
    ] {
        for old in scan(conn, &format!("{}:{{*}}:{kind}:*", from.prefix())).await? {
            // The entity type is the last part (it has no ':'); the account all before it.
            let Some((account, entity)) = after_kind(from, &old, kind)
                .and_then(|rest| rest.rsplit_once(':'))
                .and_then(|(account, entity)| {
                    Some((AccountId::parse(account).ok()?, EntityType::parse(entity)?))
                })
                .filter(|(account, entity)| new_key(from, account, *entity) == old)
            else {
                tracing::warn!(key = old, "not an account's {kind} key; left as it is");
                continue;
            };
            if move_key(conn, &old, &new_key(to, &account, entity)).await? {
                report.keys_moved += 1;
            }
        }
    }
    // An idempotency reservation follows its account, known from the action it holds.
    for old in scan(conn, &format!("{}:{{*}}:idem:*", from.prefix())).await? {
        let Some((_, digest)) = old.rsplit_once(":idem:") else {
            continue;
        };
        let holder: Option<String> = conn.get(&old).await?;
        let Some(action) = holder
            .as_deref()
            .and_then(|holder| holder.split(' ').next())
            .and_then(ActionId::parse)
        else {
            continue;
        };
        let account: Option<String> = conn.hget(to.meta(action), "account").await?;
        let Some(account) = account.and_then(|account| AccountId::parse(&account).ok()) else {
            continue; // reserved, never committed: nothing to guard
        };
        if move_key(conn, &old, &to.idempotency(&account, digest)).await? {
            report.keys_moved += 1;
        }
    }
    report.keys_moved += move_webhooks(conn, from, to).await?;
    // Budgets are a minute of state at most; under new names they simply start afresh.
    for budget in scan(conn, &format!("{}:{{*}}:budget:*", from.prefix())).await? {
        let _: () = conn.del(&budget).await?;
    }
    Ok(report)
}

/// An account's webhook endpoints, each endpoint's deliveries and log, and the attempts due
/// (re-added to the due set of the account's new partition with their scores). Entries of
/// the hooks streams are not moved: the deliverers take them in within moments of the
/// events, and a drained deployment has made its last lifecycle events.
async fn move_webhooks(
    conn: &mut Shared,
    from: &Keys,
    to: &Keys,
) -> Result<usize, RepartitionError> {
    let mut moved = 0;
    for old in scan(conn, &format!("{}:{{*}}:webhooks:*", from.prefix())).await? {
        let Some(account) =
            named_account(from, &old, "webhooks").filter(|account| from.webhooks(account) == old)
        else {
            tracing::warn!(key = old, "not an account's webhooks key; left as it is");
            continue;
        };
        let endpoints: Vec<String> = conn.hkeys(&old).await?;
        for endpoint in &endpoints {
            for (old, new) in [
                (
                    from.webhook_deliveries(&account, endpoint),
                    to.webhook_deliveries(&account, endpoint),
                ),
                (
                    from.webhook_log(&account, endpoint),
                    to.webhook_log(&account, endpoint),
                ),
                (
                    from.webhook_pending(&account, endpoint),
                    to.webhook_pending(&account, endpoint),
                ),
            ] {
                moved += usize::from(move_key(conn, &old, &new).await?);
            }
        }
        moved += usize::from(move_key(conn, &old, &to.webhooks(&account)).await?);
    }
    for partition in from.partitions() {
        // Leases are only who holds an attempt now; on a drained deployment nobody does,
        // and a moved attempt is due again when its lease's end (its score) passes.
        let _: () = conn.del(from.webhook_leases(partition)).await?;
        let due_key = from.webhook_due(partition);
        let due: Vec<(String, f64)> = conn.zrange_withscores(&due_key, 0, -1).await?;
        for (member, score) in due {
            let Some(account) = member
                .split(' ')
                .next()
                .and_then(|account| AccountId::parse(account).ok())
            else {
                continue;
            };
            let new_key = to.webhook_due(to.account_partition(&account));
            if new_key != due_key {
                let _: () = conn.zadd(&new_key, &member, score).await?;
                let _: () = conn.zrem(&due_key, &member).await?;
            }
        }
    }
    Ok(moved)
}

async fn ensure_drained(conn: &mut Shared, keys: &Keys) -> Result<(), RepartitionError> {
    for partition in keys.partitions() {
        let scheduled: u64 = conn.zcard(keys.schedule(partition)).await?;
        let ready: u64 = conn.zcard(keys.ready(partition)).await?;
        let work: u64 = conn.xlen(keys.work(partition)).await?;
        if scheduled + ready + work > 0 {
            return Err(RepartitionError::NotDrained(format!(
                "partition {partition} has {scheduled} scheduled actions, {ready} accounts with queued work and {work} batches in flight"
            )));
        }
    }
    let queues = scan(conn, &format!("{}:{{*}}:queue:*", keys.prefix())).await?;
    if let Some(queue) = queues.first() {
        return Err(RepartitionError::NotDrained(format!(
            "{queue} holds queued actions"
        )));
    }
    Ok(())
}

/// What follows `<prefix>:{<n>}:<kind>:` in `key`, that exact prefix: an account id may hold
/// ':' (even `x:webhooks:y`), so an account is never found by searching the key for
/// `:<kind>:` (`evil:webhooks:victim` would name the victim's key).
fn after_kind<'k>(keys: &Keys, key: &'k str, kind: &str) -> Option<&'k str> {
    let rest = key.strip_prefix(keys.prefix())?.strip_prefix(":{")?;
    let (partition, rest) = rest.split_once("}:")?;
    partition.parse::<u32>().ok()?;
    rest.strip_prefix(kind)?.strip_prefix(':')
}

/// The account a per-account key `<prefix>:{<n>}:<kind>:<account>` names.
fn named_account(keys: &Keys, key: &str, kind: &str) -> Option<AccountId> {
    AccountId::parse(after_kind(keys, key, kind)?).ok()
}

/// Moves `old` to `new` (nothing when they are the same key or `old` does not exist). An
/// existing `new` is never replaced: if it holds what `old` does (a run interrupted between
/// the copy and the delete) `old` goes, else both stay and a warning says so.
async fn move_key(conn: &mut Shared, old: &str, new: &str) -> Result<bool, RepartitionError> {
    if old == new {
        return Ok(false);
    }
    let exists: bool = conn.exists(new).await?;
    if exists {
        let dumped: Option<Vec<u8>> = redis::cmd("DUMP").arg(old).query_async(conn).await?;
        let there: Option<Vec<u8>> = redis::cmd("DUMP").arg(new).query_async(conn).await?;
        if dumped.is_some() && dumped == there {
            let _: () = conn.del(old).await?;
            return Ok(true);
        }
        tracing::warn!(
            from = old,
            to = new,
            "the key to move to exists already with other contents; not replaced, both left"
        );
        return Ok(false);
    }
    // Keeps an expiry (idempotency reservations have one): -1 is none (0 for RESTORE), -2
    // gone. Read first, so a key expiring meanwhile is lost, never made to last forever.
    let ttl_ms: i64 = conn.pttl(old).await?;
    if ttl_ms == -2 {
        return Ok(false);
    }
    let dumped: Option<Vec<u8>> = redis::cmd("DUMP").arg(old).query_async(conn).await?;
    let Some(dumped) = dumped else {
        return Ok(false);
    };
    let _: () = redis::cmd("RESTORE")
        .arg(new)
        .arg(ttl_ms.max(0))
        .arg(dumped)
        .query_async(conn)
        .await?;
    let _: () = conn.del(old).await?;
    Ok(true)
}

async fn scan(conn: &mut Shared, pattern: &str) -> Result<Vec<String>, RepartitionError> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An account named like another's key cannot pass for it: the account is what follows
    /// the exact `<prefix>:{n}:<kind>:`, all of it.
    #[test]
    fn an_account_is_read_from_the_exact_prefix() {
        let keys = Keys::new("bulk", 4);
        let evil = AccountId::parse("evil:webhooks:victim").unwrap();
        let key = keys.webhooks(&evil);
        assert_eq!(named_account(&keys, &key, "webhooks"), Some(evil.clone()));
        let limits = keys.limits(keys.account_partition(&evil), &evil);
        assert_eq!(named_account(&keys, &limits, "limits"), Some(evil));
        let log = "bulk:{1}:webhook-log:x:webhooks:victim";
        assert_eq!(named_account(&keys, log, "webhooks"), None);
        assert_eq!(
            named_account(&keys, "other:{1}:webhooks:acme", "webhooks"),
            None
        );
        assert_eq!(
            named_account(&keys, "bulk:{x}:webhooks:acme", "webhooks"),
            None
        );
    }
}
