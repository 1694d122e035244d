//! Flow control on Redis: dispatching batches fairly within budgets, parking the batches of
//! paused actions, api request budgets and per-account limit overrides (cancel, pause,
//! resume and PATCH are in `lifecycle`).
//! Each decision is one Lua script (see `lua/`), atomic for every process sharing Redis.

use std::collections::HashMap;

use domain::lifecycle::BatchTurn;
use domain::rate::{Quota, RatePolicy};
use domain::{AccountId, ActionId};
use redis::AsyncCommands;

use crate::event_store::{EventStore, StoreError};
use crate::keys::CONSUMER_GROUP;
use crate::roles::{AccountAdmin, Scheduling, Settlement, Submissions};
use crate::work::WorkItem;

/// What the dispatcher of one partition may hand out in one call.
#[derive(Debug, Clone, Copy)]
pub struct DispatchLimits {
    /// The processing limit of accounts without an override.
    pub default_records_per_minute: u32,
    /// Seconds of an account's pace that may go at once (never less than one batch).
    pub burst_seconds: u32,
    /// Most work entries (delivered or not) the partition's work stream may hold.
    pub max_outstanding: u32,
    /// Most batches handed out per call, to keep each script run short.
    pub max_grants: u32,
}

/// The result of one dispatch call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatched {
    pub granted: u32,
    /// How soon a batch held back by a budget or a pace could go; `None`: none is.
    pub wait_ms: Option<u64>,
}

/// The limits of accounts without an override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultLimits {
    pub records_per_minute: u32,
    pub requests_per_minute: u32,
}

/// Per-account overrides of the default limits; `None` uses the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountLimits {
    pub requests_per_minute: Option<u32>,
    pub records_per_minute: Option<u32>,
}

/// Accounts read from `ready` per run of the dispatch script, and actions from the head of
/// each one's queue: every key a run may touch is declared, so a run sees a page of them.
const ACCOUNTS_PER_PAGE: usize = 64;
const QUEUE_HEAD: isize = 16;
/// Pages one dispatch call may read. Accounts without budget keep their place at the front
/// of `ready`, so a call looks this far past them (1,024 accounts).
const MAX_PAGES: usize = 16;

impl Scheduling {
    /// Hands out the batches of one partition that may go now (see `lua/dispatch.lua`).
    ///
    /// Reads a page of the accounts in `ready` and the head of each one's queue, then lets
    /// the script decide on exactly those keys; the next page starts after the accounts the
    /// script could not serve.
    pub async fn dispatch(
        &self,
        partition: u32,
        limits: DispatchLimits,
    ) -> Result<Dispatched, StoreError> {
        let mut conn = self.conn.clone();
        let max_grants = limits.max_grants.max(1);
        let mut dispatched = Dispatched {
            granted: 0,
            wait_ms: None,
        };
        let mut offset = 0;
        for _ in 0..MAX_PAGES {
            let page = self.ready_page(partition, offset).await?;
            if page.read == 0 {
                break;
            }
            let last_page = page.read < ACCOUNTS_PER_PAGE;
            let passes = if last_page { 0 } else { 1 };
            let mut invocation = self.scripts.dispatch.prepare_invoke();
            invocation
                .key(self.keys.ready(partition))
                .key(self.keys.dispatch(partition))
                .key(self.keys.work(partition));
            for waiting in &page.accounts {
                let account = &waiting.account;
                invocation
                    .key(self.keys.account_queue(partition, account))
                    .key(self.keys.limits(partition, account))
                    .key(self.keys.records_budget(partition, account));
            }
            for action in page.accounts.iter().flat_map(|waiting| &waiting.queue_head) {
                invocation
                    .key(self.keys.meta(*action))
                    .key(self.keys.parked(*action));
            }
            invocation
                .arg(limits.default_records_per_minute.max(1))
                .arg(limits.burst_seconds)
                .arg(limits.max_outstanding.max(1))
                .arg(max_grants - dispatched.granted)
                .arg(passes)
                .arg(page.accounts.len());
            for waiting in &page.accounts {
                invocation
                    .arg(waiting.account.as_str())
                    .arg(&waiting.turn)
                    .arg(waiting.queue_head.len());
                for action in &waiting.queue_head {
                    invocation.arg(action.to_string());
                }
            }
            let (granted, wait, held): (u32, i64, i64) = invocation.invoke_async(&mut conn).await?;
            dispatched.granted += granted;
            if let Ok(wait) = u64::try_from(wait) {
                dispatched.wait_ms = Some(dispatched.wait_ms.map_or(wait, |w| w.min(wait)));
            }
            match usize::try_from(held) {
                // The accounts held by this page and the pages before it keep their places
                // at the front (so do unreadable entries); the ones served went to the back.
                Ok(held) if !last_page && dispatched.granted < max_grants => {
                    offset += held + page.unreadable;
                }
                _ => break,
            }
        }
        Ok(dispatched)
    }

    /// Up to `ACCOUNTS_PER_PAGE` entries of `ready` from `offset`, least recently served
    /// first, each with its score and the head of its queue. An entry that is not an
    /// account id (no build writes one) is logged and passed over rather than stalling the
    /// partition's every account.
    async fn ready_page(&self, partition: u32, offset: usize) -> Result<ReadyPage, StoreError> {
        let mut conn = self.conn.clone();
        let start = isize::try_from(offset).unwrap_or(isize::MAX);
        let stop = start.saturating_add(ACCOUNTS_PER_PAGE as isize - 1);
        let entries: Vec<(String, String)> = redis::cmd("ZRANGE")
            .arg(self.keys.ready(partition))
            .arg(start)
            .arg(stop)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let read = entries.len();
        let mut accounts = Vec::with_capacity(read);
        for (name, turn) in entries {
            match AccountId::parse(&name) {
                Ok(account) => accounts.push((account, turn)),
                Err(error) => {
                    tracing::error!(partition, ?name, %error, "unreadable entry in ready")
                }
            }
        }
        let unreadable = read - accounts.len();
        if accounts.is_empty() {
            return Ok(ReadyPage {
                read,
                unreadable,
                accounts: Vec::new(),
            });
        }
        let mut heads = redis::pipe();
        for (account, _) in &accounts {
            heads.zrange(
                self.keys.account_queue(partition, account),
                0,
                QUEUE_HEAD - 1,
            );
        }
        let heads: Vec<Vec<String>> = heads.query_async(&mut conn).await?;
        let accounts = accounts
            .into_iter()
            .zip(heads)
            .map(|((account, turn), head)| {
                let queue_head = head
                    .iter()
                    .filter_map(|id| {
                        let action = ActionId::parse(id);
                        if action.is_none() {
                            tracing::error!(%account, ?id, "unreadable entry in a queue");
                        }
                        action
                    })
                    .collect();
                WaitingAccount {
                    account,
                    turn,
                    queue_head,
                }
            })
            .collect();
        Ok(ReadyPage {
            read,
            unreadable,
            accounts,
        })
    }
}

/// One page of `ready` as the dispatcher read it.
struct ReadyPage {
    /// Entries read, the unreadable ones included.
    read: usize,
    unreadable: usize,
    accounts: Vec<WaitingAccount>,
}

struct WaitingAccount {
    account: AccountId,
    /// Its score in `ready` when read, as Redis wrote it.
    turn: String,
    queue_head: Vec<ActionId>,
}

impl Scheduling {
    /// Announces a consumer process and its worker count until `expires_ms`.
    pub async fn register_consumer(
        &self,
        name: &str,
        workers: usize,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        let _: () = self
            .conn
            .clone()
            .hset(
                self.keys.consumers(),
                name,
                format!("{workers} {expires_ms}"),
            )
            .await?;
        Ok(())
    }

    pub async fn deregister_consumer(&self, name: &str) -> Result<(), StoreError> {
        let _: () = self.conn.clone().hdel(self.keys.consumers(), name).await?;
        Ok(())
    }

    /// Workers of all live consumer processes; forgets processes whose announcement
    /// expired (they died without deregistering).
    pub async fn live_workers(&self, now_ms: i64) -> Result<u32, StoreError> {
        let key = self.keys.consumers();
        let entries: HashMap<String, String> = self.conn.clone().hgetall(&key).await?;
        let mut workers = 0u32;
        for (name, value) in entries {
            let mut parts = value.split(' ');
            let count: u32 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let expires: i64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            if expires < now_ms {
                let _: () = self.conn.clone().hdel(&key, &name).await?;
            } else {
                workers = workers.saturating_add(count);
            }
        }
        Ok(workers)
    }
}

impl Settlement {
    /// Parks a delivered batch of a paused action (see `lua/park.lua`), unless it was
    /// resumed or cancelled meanwhile: its turn now, `Hold` once parked; `None` when the
    /// entry is no longer `consumer`'s (taken over while this one stalled).
    pub async fn park(
        &self,
        item: &WorkItem,
        consumer: &str,
        account: &AccountId,
        cost: u32,
        default_records_per_minute: u32,
    ) -> Result<Option<BatchTurn>, StoreError> {
        let partition = self.keys.partition_of(item.action_id);
        let turn: String = self
            .scripts
            .park
            .key(self.keys.meta(item.action_id))
            .key(self.keys.parked(item.action_id))
            .key(&item.stream)
            .key(self.keys.records_budget(partition, account))
            .key(self.keys.limits(partition, account))
            .arg(item.batch)
            .arg(&item.entry_id)
            .arg(CONSUMER_GROUP)
            .arg(cost)
            .arg(default_records_per_minute.max(1))
            .arg(consumer)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if turn == "gone" {
            return Ok(None);
        }
        BatchTurn::parse(&turn).map(Some).ok_or_else(|| {
            StoreError::Corrupt(format!("park.lua answered an unknown turn {turn:?}"))
        })
    }
}

impl EventStore {
    /// The records per batch an action was planned with (`None`: unknown action, or one
    /// created before this was recorded).
    pub async fn batch_size_of(&self, action: ActionId) -> Result<Option<u32>, StoreError> {
        Ok(self
            .conn
            .clone()
            .hget(self.keys.meta(action), "batchSize")
            .await?)
    }

    pub async fn account_limits(&self, account: &AccountId) -> Result<AccountLimits, StoreError> {
        let partition = self.keys.account_partition(account);
        let fields: HashMap<String, u32> = self
            .conn
            .clone()
            .hgetall(self.keys.limits(partition, account))
            .await?;
        Ok(AccountLimits {
            requests_per_minute: fields.get("requestsPerMinute").copied(),
            records_per_minute: fields.get("recordsPerMinute").copied(),
        })
    }
}

impl Submissions {
    /// Charges one api request to its account's budget.
    pub async fn admit_request(
        &self,
        account: &AccountId,
        default_requests_per_minute: u32,
        burst_seconds: u32,
    ) -> Result<Quota, StoreError> {
        let partition = self.keys.account_partition(account);
        let (allowed, ahead, per_minute, burst): (i64, String, u32, u32) = self
            .scripts
            .request_budget
            .key(self.keys.requests_budget(account))
            .key(self.keys.limits(partition, account))
            .arg(default_requests_per_minute.max(1))
            .arg(burst_seconds)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let ahead_ms: f64 = ahead
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("request budget returned {ahead:?}")))?;
        Ok(RatePolicy { per_minute, burst }.quota(allowed == 1, ahead_ms))
    }
}

impl AccountAdmin {
    /// Replaces an account's overrides (`None` removes one); the account's budgets move
    /// to the new rates at once (see `lua/set_limits.lua`). `defaults` are the limits of
    /// accounts without an override.
    pub async fn set_account_limits(
        &self,
        account: &AccountId,
        limits: AccountLimits,
        defaults: DefaultLimits,
    ) -> Result<(), StoreError> {
        let partition = self.keys.account_partition(account);
        let override_arg = |value: Option<u32>| value.map(|v| v.to_string()).unwrap_or_default();
        let _: i64 = self
            .scripts
            .set_limits
            .key(self.keys.limits(partition, account))
            .key(self.keys.records_budget(partition, account))
            .key(self.keys.requests_budget(account))
            .arg(defaults.records_per_minute.max(1))
            .arg(defaults.requests_per_minute.max(1))
            .arg(override_arg(limits.records_per_minute))
            .arg(override_arg(limits.requests_per_minute))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
