//! Per-account caps on long-lived work in this process (event streams, result exports): an
//! account holding all of its slots waits for one of its own to end, and never takes
//! another account's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use domain::AccountId;

#[derive(Clone)]
pub struct AccountSlots {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    taken: Mutex<HashMap<AccountId, usize>>,
}

impl AccountSlots {
    /// At most `limit` slots per account (at least one).
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit: limit.max(1),
                taken: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// A slot of `account` until the returned guard drops; `None` when it holds them all.
    pub fn take(&self, account: &AccountId) -> Option<Slot> {
        let mut taken = self.lock();
        let count = taken.entry(account.clone()).or_default();
        if *count >= self.inner.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            account: account.clone(),
        })
    }

    /// Slots `account` holds now.
    pub fn taken(&self, account: &AccountId) -> usize {
        self.lock().get(account).copied().unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<AccountId, usize>> {
        // A panic while holding the lock leaves counts that are still counts.
        self.inner
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One slot of an account, held while it lives.
pub struct Slot {
    slots: AccountSlots,
    account: AccountId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.lock();
        if let Some(count) = taken.get_mut(&self.account) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                taken.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_holds_at_most_its_limit_and_never_another_accounts() {
        let slots = AccountSlots::new(2);
        let a = AccountId::parse("acct-a").expect("an account id");
        let b = AccountId::parse("acct-b").expect("an account id");
        let first = slots.take(&a).expect("a first slot");
        let _second = slots.take(&a).expect("a second slot");
        assert!(slots.take(&a).is_none());
        assert!(slots.take(&b).is_some(), "another account is not held up");
        drop(first);
        assert_eq!(slots.taken(&a), 1);
        assert!(slots.take(&a).is_some());
    }
}
