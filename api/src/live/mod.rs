//! Live progress: one reader per watched action per api process, fanned out in memory.
//!
//! A stream subscriber never reads Redis. The first subscriber of an action starts a
//! `watcher` task that folds the action's new events as they land (the same pure fold as
//! the projector) and publishes what changed: status changes and at most one `progress`
//! per poll on a `broadcast`, the latest view on a `watch`. Every other subscriber of the
//! action in this process shares it. The watcher outlives its last subscriber by
//! `LINGER`, so a client that reconnects finds it warm, then stops. New actions of an
//! account are found by one `lobby` task per partition.
//!
//! Message ids are event seqs (docs/decisions/0053): a client resuming after `seq` gets
//! the status changes after it from the watcher's recent ones, or read back from the
//! stream (`replay`) when this process did not see them, then live messages (`follow`).

mod follow;
mod lobby;
mod replay;
mod watcher;

use crate::slots::{AccountSlots, Slot};
use infra::metrics::names;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{AccountId, ActionId, ActionView};
use infra::Submissions;
use mongodb::Database;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use follow::{action_stream, follow_account, plan_resume, Out, Start};

/// Actions one account stream follows at once.
pub const ACCOUNT_STREAM_ACTIONS: usize = 100;
/// Watchers one account may have running in a process, per stream it may hold open: an
/// account stream follows many actions, and a watcher outlives its last subscriber.
const WATCHERS_PER_STREAM: usize = 2;
/// How long a stream waits for its watcher's first view.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a watcher outlives its last subscriber.
const LINGER: Duration = Duration::from_secs(15);
/// Messages a subscriber may fall behind by before it is sent a fresh snapshot instead.
const BROADCAST_CAPACITY: usize = 256;
/// New-action notices a listener may fall behind by; at least a lobby's read of them.
const NOTICE_CAPACITY: usize = 1024;

/// One message of a live stream, rendered once for every subscriber.
#[derive(Debug)]
pub struct Message {
    /// The seq of the last event it reflects: its SSE id.
    pub seq: u64,
    /// The SSE event name: `progress`, a status change, or a final message.
    pub name: &'static str,
    /// JSON.
    pub data: String,
    /// The action's status once the message's event is folded (the account stream's
    /// filter).
    pub status: domain::ActionStatus,
    /// The action's last message: the stream ends after it.
    pub last: bool,
    /// The message as an action stream sends it (`id: <seq>`), rendered once for all.
    pub frame: axum::body::Bytes,
}

impl Message {
    pub fn new(
        seq: u64,
        name: &'static str,
        data: String,
        status: domain::ActionStatus,
        last: bool,
    ) -> Self {
        let frame = crate::routes::events::frame(Some(&seq.to_string()), name, &data);
        Self {
            seq,
            name,
            data,
            status,
            last,
            frame,
        }
    }
}

/// The live state of one watched action.
pub struct ActionFeed {
    account: AccountId,
    messages: broadcast::Sender<Arc<Message>>,
    /// `None` until the watcher has loaded the view.
    latest: watch::Sender<Option<Arc<Live>>>,
}

/// What a watcher knows of its action, published as one value: the view, and the status
/// changes it saw before it, so that a client resuming after one of them needs no read.
#[derive(Debug, Clone)]
pub struct Live {
    pub view: ActionView,
    /// The status changes after `changes_after`, up to `view`, oldest first.
    pub changes: VecDeque<Arc<Message>>,
    /// Every change after this seq is in `changes` (the watcher saw it).
    pub changes_after: u64,
}

/// A subscription to one action: messages from now on, and the view as it stands.
pub struct Subscription {
    pub action: ActionId,
    pub messages: broadcast::Receiver<Arc<Message>>,
    pub latest: watch::Receiver<Option<Arc<Live>>>,
}

#[derive(Clone)]
pub struct LiveHub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Submissions,
    database: Database,
    feeds: Mutex<HashMap<ActionId, Arc<ActionFeed>>>,
    lobbies: Mutex<HashMap<u32, broadcast::Sender<(ActionId, AccountId)>>>,
    streams: AccountSlots,
    watchers_per_account: Mutex<HashMap<AccountId, usize>>,
    max_streams_per_account: usize,
    stream_lifetime: Duration,
    /// Cancelled at shutdown: watchers stop and streams end, so that graceful shutdown is
    /// not held up by clients that never hang up.
    shutdown: CancellationToken,
}

impl LiveHub {
    pub fn new(
        store: Submissions,
        database: Database,
        max_streams_per_account: usize,
        stream_lifetime: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                database,
                feeds: Mutex::new(HashMap::new()),
                lobbies: Mutex::new(HashMap::new()),
                streams: AccountSlots::new(max_streams_per_account),
                watchers_per_account: Mutex::new(HashMap::new()),
                max_streams_per_account,
                stream_lifetime,
                shutdown,
            }),
        }
    }

    pub fn store(&self) -> &Submissions {
        &self.inner.store
    }

    pub fn shutdown(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Subscribes to `action` of `account`, starting its watcher if this process has none;
    /// `None` when the account has as many watchers running as it may.
    pub fn subscribe(&self, action: ActionId, account: &AccountId) -> Option<Subscription> {
        let mut feeds = lock(&self.inner.feeds);
        let feed = match feeds.get(&action) {
            Some(feed) => feed.clone(),
            None => {
                let mut watchers = lock(&self.inner.watchers_per_account);
                let running = watchers.entry(account.clone()).or_default();
                if *running >= self.inner.max_streams_per_account * WATCHERS_PER_STREAM {
                    return None;
                }
                *running += 1;
                let (messages, _) = broadcast::channel(BROADCAST_CAPACITY);
                let (latest, _) = watch::channel(None);
                let feed = Arc::new(ActionFeed {
                    account: account.clone(),
                    messages,
                    latest,
                });
                feeds.insert(action, feed.clone());
                tokio::spawn(watcher::run(self.clone(), action, feed.clone()));
                feed
            }
        };
        // Under the lock: a watcher only leaves the map while it has no receiver.
        Some(Subscription {
            action,
            messages: feed.messages.subscribe(),
            latest: feed.latest.subscribe(),
        })
    }

    /// Takes `action`'s watcher out of the map if nobody subscribes to it; the caller
    /// (the watcher) then stops.
    fn release_if_unwatched(&self, action: ActionId, feed: &Arc<ActionFeed>) -> bool {
        let mut feeds = lock(&self.inner.feeds);
        if feed.messages.receiver_count() > 0 {
            return false;
        }
        if feeds
            .get(&action)
            .is_some_and(|held| Arc::ptr_eq(held, feed))
        {
            feeds.remove(&action);
        }
        true
    }

    /// A watcher stopped (unwatched, or the api is stopping): it no longer counts.
    fn watcher_ended(&self, action: ActionId, feed: &Arc<ActionFeed>) {
        {
            let mut feeds = lock(&self.inner.feeds);
            if feeds
                .get(&action)
                .is_some_and(|held| Arc::ptr_eq(held, feed))
            {
                feeds.remove(&action);
            }
        }
        let mut watchers = lock(&self.inner.watchers_per_account);
        if let Some(running) = watchers.get_mut(&feed.account) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                watchers.remove(&feed.account);
            }
        }
    }

    /// Notices of actions created in `partition` from now on.
    pub fn new_actions(&self, partition: u32) -> broadcast::Receiver<(ActionId, AccountId)> {
        let mut lobbies = lock(&self.inner.lobbies);
        lobbies
            .entry(partition)
            .or_insert_with(|| {
                let (notices, _) = broadcast::channel(NOTICE_CAPACITY);
                tokio::spawn(lobby::run(self.clone(), partition, notices.clone()));
                notices
            })
            .subscribe()
    }

    fn release_lobby_if_unwatched(
        &self,
        partition: u32,
        notices: &broadcast::Sender<(ActionId, AccountId)>,
    ) -> bool {
        let mut lobbies = lock(&self.inner.lobbies);
        if notices.receiver_count() > 0 {
            return false;
        }
        if lobbies
            .get(&partition)
            .is_some_and(|held| held.same_channel(notices))
        {
            lobbies.remove(&partition);
        }
        true
    }

    /// Counts an open stream of `account` until the returned guard drops; `None` when the
    /// account has as many open as it may (in this process).
    pub fn open_stream(&self, account: &AccountId) -> Option<StreamSlot> {
        let slot = self.inner.streams.take(account)?;
        metrics::gauge!(names::SSE_SUBSCRIBERS).increment(1.0);
        Some(StreamSlot { _slot: slot })
    }

    pub fn max_streams_per_account(&self) -> usize {
        self.inner.max_streams_per_account
    }

    /// How long one stream stays open before the server ends it.
    /// With ±10% jitter, so that streams opened together (after a deploy) do not all end
    /// and resume together.
    pub fn stream_lifetime(&self) -> Duration {
        self.inner
            .stream_lifetime
            .mul_f64(rand::random_range(0.9..1.1))
    }
}

/// One open stream of an account, counted (per account, and in the subscribers gauge)
/// while it lives.
pub struct StreamSlot {
    _slot: Slot,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        metrics::gauge!(names::SSE_SUBSCRIBERS).decrement(1.0);
    }
}

/// The maps hold no invariant a panicking holder could break halfway, so a poisoned lock
/// is taken as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The watcher's first view of the subscribed action; `Err` when it could not be loaded in
/// `LOAD_TIMEOUT` (Redis or MongoDB unavailable).
pub async fn loaded(subscription: &Subscription) -> Result<Arc<Live>, Unavailable> {
    let mut latest = subscription.latest.clone();
    let loaded = tokio::time::timeout(LOAD_TIMEOUT, async {
        latest
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|live| live.clone())
    })
    .await;
    loaded.ok().flatten().ok_or(Unavailable)
}

/// An action's view could not be loaded in time.
#[derive(Debug)]
pub struct Unavailable;
