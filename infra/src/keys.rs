//! The Redis key layout. Every key of one action shares its partition's hash tag, so the
//! Lua scripts that touch several of them stay on one Redis Cluster slot.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:{n}:events:<action>` | stream | the action's events; never trimmed (replay) |
//! | `P:{n}:meta:<action>` | hash | seq counter, batch counters, append guards, attempts per batch |
//! | `P:{n}:batches:<action>` | hash | batch number -> records JSON; deleted when applied |
//! | `P:{n}:staging:<token>:batches` | hash | one submission's batches until commit renames it |
//! | `P:{n}:staging:<token>:events` | list | one submission's opening outcome events until commit |
//! | `P:{n}:work` | stream | one entry per batch ready to apply; group `consumers` |
//! | `P:{n}:dead` | stream | batches that failed every attempt, with their records and error |
//! | `P:{n}:feed` | stream | "action X has events up to seq S"; group `projector` |
//! | `P:{n}:schedule` | zset | scheduled actions by start time (ms) |
//! | `P:{n}:actions` | zset | every action by creation time (ms); replay walks it |
//! | `P:{n}:quarantine` | hash | action -> why its views cannot be projected (JSON); see `quarantine` |
//! | `P:{n}:ready` | zset | accounts with actions to dispatch, by the dispatch turn that last served them |
//! | `P:{n}:dispatch` | hash | `turn`: the dispatch counter behind `ready`'s scores |
//! | `P:{n}:queue:<account>` | zset | the account's eligible actions, by creation time (ms) |
//! | `P:{n}:parked:<action>` | set | batches that reached a consumer while the action was paused |
//! | `P:{n}:budget:records:<account>` | string | the account's processing GCRA TAT (ms) |
//! | `P:{n}:budget:requests:<account>` | string | the account's api request GCRA TAT (ms) |
//! | `P:{n}:limits:<account>` | hash | per-account overrides: `recordsPerMinute`, `requestsPerMinute` |
//! | `P:{n}:fields:<account>:<entityType>` | string | the account's custom field definitions (JSON) |
//! | `P:{n}:slots:<account>:<entityType>` | hash | `slot:<k>` → the unique field bound to slot k, for good |
//! | `P:consumers` | hash | live consumer process -> "<workers> <expires ms>", sizes the dispatch |
//! | `P:apikey:<keyId>`, `P:apikeys:<account>` | hash, zset | API keys (see `api_keys`) |
//! | `P:{n}:idem:<sha256>` | string | `Idempotency-Key` of an account -> "<action> <body sha256>", 24 h; in the account's partition |
//! | `P:{n}:hooks` | stream | lifecycle events `{action, seq, type, at}` for webhooks; group `webhooks`; `MAXLEN ~` 100,000 |
//! | `P:{n}:webhooks:<account>` | hash | endpoint id -> endpoint JSON (url, events, secrets); in the account's partition |
//! | `P:{n}:webhook-deliveries:<endpoint>` | hash | delivery (`webhook-id`) -> delivery JSON (body, attempts, state) |
//! | `P:{n}:webhook-log:<endpoint>` | zset | delivery -> created ms: which deliveries are kept, newest listed first |
//! | `P:{n}:webhook-due` | zset | `"<account> <endpoint> <delivery>"` -> when its next attempt is due (ms), or its lease ends |
//!
//! An account's keys live in the partition of its actions: new actions are minted in
//! `AccountId::partition`, so one account has one queue and one budget, and the dispatch
//! script reaches them all in one slot. Every script is given every key it touches in
//! `KEYS` (the key guard in `lua/lib.lua` refuses any other), so the layout above is what
//! keeps each script on one Redis Cluster slot.

use domain::{AccountId, ActionId, EntityType};

pub const CONSUMER_GROUP: &str = "consumers";
pub const PROJECTOR_GROUP: &str = "projector";
pub const WEBHOOKS_GROUP: &str = "webhooks";

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    partitions: u32,
}

impl Keys {
    pub fn new(prefix: impl Into<String>, partitions: u32) -> Self {
        Self {
            prefix: prefix.into(),
            partitions: partitions.max(1),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn partitions(&self) -> impl Iterator<Item = u32> {
        0..self.partitions
    }

    pub fn partition_of(&self, action: ActionId) -> u32 {
        action.partition(self.partitions)
    }

    /// Where an account's new actions, queue, budgets and limits live.
    pub fn account_partition(&self, account: &AccountId) -> u32 {
        account.partition(self.partitions)
    }

    /// `<prefix>:{n}:`, the start of every key in partition `n`.
    fn partition_prefix(&self, partition: u32) -> String {
        format!("{}:{{{partition}}}:", self.prefix)
    }

    pub fn ready(&self, partition: u32) -> String {
        self.partition_key(partition, "ready")
    }

    pub fn dispatch(&self, partition: u32) -> String {
        self.partition_key(partition, "dispatch")
    }

    pub fn account_queue(&self, partition: u32, account: &AccountId) -> String {
        format!("{}queue:{account}", self.partition_prefix(partition))
    }

    pub fn records_budget(&self, partition: u32, account: &AccountId) -> String {
        format!(
            "{}budget:records:{account}",
            self.partition_prefix(partition)
        )
    }

    pub fn requests_budget(&self, account: &AccountId) -> String {
        let partition = self.account_partition(account);
        format!(
            "{}budget:requests:{account}",
            self.partition_prefix(partition)
        )
    }

    /// What the records kept by an account's actions take in Redis, in bytes (released
    /// when retention archives an action).
    pub fn kept_bytes(&self, account: &AccountId) -> String {
        let partition = self.account_partition(account);
        format!("{}kept:{account}", self.partition_prefix(partition))
    }

    /// Per-account limit overrides. Kept in the account's partition; `partition` is given
    /// so that the processing side reads the copy beside the action it dispatches.
    pub fn limits(&self, partition: u32, account: &AccountId) -> String {
        format!("{}limits:{account}", self.partition_prefix(partition))
    }

    /// An account's custom field definitions for one entity type (JSON).
    pub fn field_definitions(&self, account: &AccountId, entity: EntityType) -> String {
        let partition = self.account_partition(account);
        format!(
            "{}fields:{account}:{}",
            self.partition_prefix(partition),
            entity.as_str()
        )
    }

    /// Which of the account's unique fields of `entity` holds each external id slot.
    pub fn external_id_slots(&self, account: &AccountId, entity: EntityType) -> String {
        let partition = self.account_partition(account);
        format!(
            "{}slots:{account}:{}",
            self.partition_prefix(partition),
            entity.as_str()
        )
    }

    /// Actions the projector skips because their views cannot be written, with the reason.
    pub fn quarantine(&self, partition: u32) -> String {
        self.partition_key(partition, "quarantine")
    }

    pub fn parked(&self, action: ActionId) -> String {
        self.action_key(action, "parked")
    }

    pub fn consumers(&self) -> String {
        format!("{}:consumers", self.prefix)
    }

    fn partition_key(&self, partition: u32, name: &str) -> String {
        format!("{}:{{{partition}}}:{name}", self.prefix)
    }

    fn action_key(&self, action: ActionId, name: &str) -> String {
        let partition = self.partition_of(action);
        format!("{}:{{{partition}}}:{name}:{action}", self.prefix)
    }

    pub fn events(&self, action: ActionId) -> String {
        self.action_key(action, "events")
    }

    pub fn meta(&self, action: ActionId) -> String {
        self.action_key(action, "meta")
    }

    pub fn batches(&self, action: ActionId) -> String {
        self.action_key(action, "batches")
    }

    /// Where one submission stages its batches; `commit_action` renames it to `batches`.
    /// In the account's partition, where the action will be minted.
    pub fn staged_batches(&self, partition: u32, token: &str) -> String {
        format!(
            "{}staging:{token}:batches",
            self.partition_prefix(partition)
        )
    }

    /// Where one submission stages its opening outcome events (rejected and duplicate
    /// records), 3 list items per event: id, type, data.
    pub fn staged_events(&self, partition: u32, token: &str) -> String {
        format!("{}staging:{token}:events", self.partition_prefix(partition))
    }

    pub fn dead_letters(&self, partition: u32) -> String {
        self.partition_key(partition, "dead")
    }

    /// `digest` is the hex SHA-256 of the account and the client's key, so that any bytes a
    /// client sends end up as a fixed-size key. In the account's partition, beside the
    /// actions it guards: a failover keeps or loses the two together, in the order they
    /// were written (a reservation is never lost while its action survives).
    pub fn idempotency(&self, account: &AccountId, digest: &str) -> String {
        let partition = self.account_partition(account);
        format!("{}idem:{digest}", self.partition_prefix(partition))
    }

    /// Where builds before issue 14 kept the reservation, outside any partition; read as a
    /// fallback until every such reservation has expired (`IDEMPOTENCY_TTL_SECS` after an
    /// upgrade).
    pub fn legacy_idempotency(&self, digest: &str) -> String {
        format!("{}:idem:{digest}", self.prefix)
    }

    pub fn work(&self, partition: u32) -> String {
        self.partition_key(partition, "work")
    }

    pub fn feed(&self, partition: u32) -> String {
        self.partition_key(partition, "feed")
    }

    /// Lifecycle events for the webhook deliverers (see `lua/lib.lua`'s `xadd_event`).
    pub fn hooks(&self, partition: u32) -> String {
        self.partition_key(partition, "hooks")
    }

    /// An account's webhook endpoints, in its partition.
    pub fn webhooks(&self, account: &AccountId) -> String {
        let partition = self.account_partition(account);
        format!("{}webhooks:{account}", self.partition_prefix(partition))
    }

    /// One endpoint's deliveries; in its account's partition, beside the endpoint.
    pub fn webhook_deliveries(&self, account: &AccountId, endpoint: &str) -> String {
        let partition = self.account_partition(account);
        format!(
            "{}webhook-deliveries:{endpoint}",
            self.partition_prefix(partition)
        )
    }

    /// Which of an endpoint's deliveries are kept, by creation time.
    pub fn webhook_log(&self, account: &AccountId, endpoint: &str) -> String {
        let partition = self.account_partition(account);
        format!("{}webhook-log:{endpoint}", self.partition_prefix(partition))
    }

    /// Which of an endpoint's deliveries are pending, by when each became so.
    pub fn webhook_pending(&self, account: &AccountId, endpoint: &str) -> String {
        let partition = self.account_partition(account);
        format!(
            "{}webhook-pending:{endpoint}",
            self.partition_prefix(partition)
        )
    }

    /// Deliveries of a partition's accounts waiting for an attempt, by when it is due.
    pub fn webhook_due(&self, partition: u32) -> String {
        self.partition_key(partition, "webhook-due")
    }

    /// The leases on a partition's due attempts held now (member -> when the lease ends):
    /// what each account has in flight (`webhook_claim.lua`).
    pub fn webhook_leases(&self, partition: u32) -> String {
        self.partition_key(partition, "webhook-leases")
    }

    pub fn schedule(&self, partition: u32) -> String {
        self.partition_key(partition, "schedule")
    }

    /// Actions whose opening events are still being moved in, scored by when a sweeper may
    /// finish what their api left.
    pub fn opening(&self, partition: u32) -> String {
        self.partition_key(partition, "opening")
    }

    pub fn actions(&self, partition: u32) -> String {
        self.partition_key(partition, "actions")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_action_share_a_hash_tag() {
        let keys = Keys::new("bulk", 4);
        let action = ActionId::parse("01JDQ6V4J8Q0Y5Z6X7W8V9T0S1").unwrap();
        let partition = keys.partition_of(action);
        let tag = format!("{{{partition}}}");
        for key in [
            keys.events(action),
            keys.meta(action),
            keys.batches(action),
            keys.staged_batches(partition, "t"),
            keys.staged_events(partition, "t"),
            keys.work(partition),
            keys.dead_letters(partition),
            keys.feed(partition),
            keys.hooks(partition),
            keys.schedule(partition),
            keys.parked(action),
            keys.ready(partition),
        ] {
            assert!(key.starts_with("bulk:"), "{key}");
            assert!(key.contains(&tag), "{key}");
        }
        let account = AccountId::parse("acme").unwrap();
        let home = keys.account_partition(&account);
        let tag = format!("{{{home}}}");
        for key in [
            keys.account_queue(home, &account),
            keys.records_budget(home, &account),
            keys.requests_budget(&account),
            keys.limits(home, &account),
            keys.ready(home),
            keys.dispatch(home),
            keys.webhooks(&account),
            keys.webhook_deliveries(&account, "ep_1"),
            keys.webhook_log(&account, "ep_1"),
            keys.webhook_pending(&account, "ep_1"),
            keys.webhook_due(home),
            keys.webhook_leases(home),
        ] {
            assert!(key.contains(&tag), "{key}");
        }
        assert!(keys
            .account_queue(home, &account)
            .starts_with(&keys.partition_prefix(home)));
    }
}
