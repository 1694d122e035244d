//! What one client is sent: where it starts (a snapshot, or a resume after an id), then
//! its action's live messages, each once.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use domain::live::{final_message, StatusChange};
use domain::{ActionId, ActionStatus, ActionView};
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::replay::{status_changes_after, Replay, ReplayedChange};
use super::watcher::{final_of, progress_of};
use super::{Live, LiveHub, Message, Subscription};

/// Events a resuming client may have missed and still be sent the changes among them
/// one by one when this process' watcher did not see them; further back, it gets a
/// snapshot (docs/decisions/0053).
pub const RESUME_EVENTS: u64 = 256;

/// Where a client's stream starts.
pub enum Start {
    /// A fresh snapshot: no id given, or one that cannot be resumed from.
    Snapshot,
    /// After `after`, every change since being among the watcher's recent ones.
    Recent { after: u64 },
    /// After `after`, the changes since read back from the stream, which ends at
    /// `through`.
    Stream {
        after: u64,
        changes: Vec<ReplayedChange>,
        through: u64,
    },
    /// The action is finished and the client has its final message: nothing to send.
    Finished,
}

/// Decides where a client resuming after `after` starts, reading Redis only when this
/// process' watcher cannot tell (it started watching later, or is behind another api
/// process the client was connected to).
pub async fn plan_resume(
    hub: &LiveHub,
    action: ActionId,
    live: &Live,
    after: u64,
) -> Result<Start, infra::StoreError> {
    let view = &live.view;
    if after == 0 {
        return Ok(Start::Snapshot);
    }
    if after == view.last_seq && view.status.is_terminal() {
        return Ok(Start::Finished);
    }
    if after <= view.last_seq && after >= live.changes_after {
        return Ok(Start::Recent { after });
    }
    let Some(meta) = hub.store().meta(action).await? else {
        return Ok(Start::Snapshot);
    };
    // Known to be too far back, or not a seq of this stream: no events are read.
    if after > meta.head_seq || meta.head_seq - after > RESUME_EVENTS || meta.archived {
        return Ok(Start::Snapshot);
    }
    Ok(
        match status_changes_after(hub.store(), action, after, RESUME_EVENTS as usize).await? {
            Replay::Changes { changes, through } => Start::Stream {
                after,
                changes,
                through,
            },
            Replay::Finished => Start::Finished,
            Replay::TooFarBack => Start::Snapshot,
        },
    )
}

/// Where a follower writes: one client's channel, the id form of its stream, its filter,
/// and when it must stop even if the client stopped reading.
#[derive(Clone)]
pub struct Out {
    pub sender: mpsc::Sender<Bytes>,
    /// `Some(action)`: ids are `<action>:<seq>` (the account stream).
    pub prefix: Option<ActionId>,
    pub statuses: Option<Arc<HashSet<ActionStatus>>>,
    pub deadline: tokio::time::Instant,
    pub shutdown: CancellationToken,
}

/// The client has gone (or its time is up).
pub struct Gone;

impl Out {
    async fn write(&self, frame: Bytes) -> Result<(), Gone> {
        tokio::select! {
            sent = self.sender.send(frame) => sent.map_err(|_| Gone),
            _ = tokio::time::sleep_until(self.deadline) => Err(Gone),
            _ = self.shutdown.cancelled() => Err(Gone),
        }
    }

    fn passes(&self, status: ActionStatus) -> bool {
        self.statuses
            .as_ref()
            .is_none_or(|statuses| statuses.contains(&status))
    }

    fn id(&self, seq: u64) -> String {
        match self.prefix {
            Some(action) => format!("{action}:{seq}"),
            None => seq.to_string(),
        }
    }

    async fn send(
        &self,
        id: Option<u64>,
        name: &str,
        data: &str,
        status: ActionStatus,
    ) -> Result<(), Gone> {
        if !self.passes(status) {
            return Ok(());
        }
        let id = id.map(|seq| self.id(seq));
        self.write(crate::routes::events::frame(id.as_deref(), name, data))
            .await
    }

    /// A watcher's message: on an action's own stream, the frame it rendered once.
    async fn message(&self, message: &Message) -> Result<(), Gone> {
        if self.prefix.is_none() && self.statuses.is_none() {
            return self.write(message.frame.clone()).await;
        }
        self.send(
            Some(message.seq),
            message.name,
            &message.data,
            message.status,
        )
        .await
    }

    /// The view; a finished one without an id (its final message that follows has it,
    /// so that a client cut off between the two is sent both again).
    async fn snapshot(&self, view: &ActionView) -> Result<(), Gone> {
        let data = serde_json::to_string(view).unwrap_or_default();
        let id = (!view.status.is_terminal()).then_some(view.last_seq);
        self.send(id, "snapshot", &data, view.status).await?;
        self.final_message(view).await
    }

    async fn final_message(&self, view: &ActionView) -> Result<(), Gone> {
        if final_message(view.status).is_some() {
            if let Ok(last) = final_of(view) {
                self.message(&last).await?;
            }
        }
        Ok(())
    }
}

/// Where a client stands: the seq of the last message sent and its rank at that seq: a
/// status change read back from the stream (no counts), then the counts (a live change
/// or a progress, both carry them), then the final message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Sent {
    seq: u64,
    rank: u8,
}

const REPLAYED: u8 = 0;
const COUNTS: u8 = 1;
const FINAL: u8 = 2;

impl Sent {
    fn of(message: &Message) -> Self {
        Sent {
            seq: message.seq,
            rank: if message.last { FINAL } else { COUNTS },
        }
    }

    /// Whether `message` tells the client nothing it was not sent.
    fn covers(&self, message: &Message) -> bool {
        // A live change at the seq of a replayed one is that change again; the progress
        // of that seq still brings its counts.
        let replayed_again = message.seq == self.seq
            && self.rank == REPLAYED
            && message.name != "progress"
            && !message.last;
        Sent::of(message) <= *self || replayed_again
    }
}

/// Why a follower stopped.
pub enum Ended {
    /// The action finished (its final message was sent), the client left, the stream's
    /// time is up or the api stops.
    Done,
    /// Its view could not be loaded: the client should reconnect later.
    Unavailable,
}

/// Frames a start may come to at most: a snapshot and a final message, or the changes
/// read back for a resume (at most `RESUME_EVENTS`) and a progress.
const START_FRAMES: usize = RESUME_EVENTS as usize + 4;
const KEEP_ALIVE_FRAME: &[u8] = b": keep-alive\n\n";

/// One action's stream as the response body itself, without a task and a channel per
/// client: the watcher's rendered frame goes from the broadcast straight to the
/// connection. Ends after the final message; the caller bounds it in time.
pub async fn action_stream(
    subscription: Subscription,
    live: Arc<Live>,
    start: Start,
    out_deadline: tokio::time::Instant,
    shutdown: CancellationToken,
    keep_alive: std::time::Duration,
) -> impl Stream<Item = Bytes> {
    let (sender, mut receiver) = mpsc::channel(START_FRAMES);
    let out = Out {
        sender,
        prefix: None,
        statuses: None,
        deadline: out_deadline,
        shutdown,
    };
    let sent = send_start(&subscription, &live, start, &out)
        .await
        .ok()
        .flatten();
    drop(out);
    let mut first = Vec::new();
    while let Ok(frame) = receiver.try_recv() {
        first.push(frame);
    }
    let state = Direct {
        subscription,
        sent,
        keep_alive,
    };
    futures::stream::iter(first).chain(futures::stream::unfold(state, next_frame))
}

struct Direct {
    subscription: Subscription,
    /// `None`: the final message was sent.
    sent: Option<Sent>,
    keep_alive: std::time::Duration,
}

async fn next_frame(mut state: Direct) -> Option<(Bytes, Direct)> {
    let sent = state.sent?;
    loop {
        let received = match tokio::time::timeout(
            state.keep_alive,
            state.subscription.messages.recv(),
        )
        .await
        {
            Err(_) => return Some((Bytes::from_static(KEEP_ALIVE_FRAME), state)),
            Ok(received) => received,
        };
        match received {
            Ok(message) => {
                if sent.covers(&message) {
                    continue;
                }
                state.sent = (!message.last).then(|| Sent::of(&message));
                return Some((message.frame.clone(), state));
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let current = state.subscription.latest.borrow().clone();
                let Some(current) = current else { continue };
                let view = &current.view;
                let mut frames = snapshot_frame(view).to_vec();
                if view.status.is_terminal() {
                    if let Ok(last) = final_of(view) {
                        frames.extend_from_slice(&last.frame);
                    }
                    state.sent = None;
                } else {
                    state.sent = Some(Sent {
                        seq: view.last_seq,
                        rank: COUNTS,
                    });
                }
                return Some((Bytes::from(frames), state));
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// The view as a `snapshot` frame; a finished one without an id (its final message, which
/// follows, has it, so that a client cut off between the two is sent both again).
fn snapshot_frame(view: &ActionView) -> Bytes {
    let data = serde_json::to_string(view).unwrap_or_default();
    let id = (!view.status.is_terminal()).then(|| view.last_seq.to_string());
    crate::routes::events::frame(id.as_deref(), "snapshot", &data)
}

/// Sends one action's messages to `out` from `start` until it finishes, the client
/// leaves, the stream's time is up or the api stops.
pub async fn follow(
    mut subscription: Subscription,
    live: Arc<Live>,
    start: Start,
    out: &Out,
) -> Ended {
    let _ = follow_inner(&mut subscription, &live, start, out).await;
    Ended::Done
}

async fn follow_inner(
    subscription: &mut Subscription,
    live: &Live,
    start: Start,
    out: &Out,
) -> Result<(), Gone> {
    let Some(mut sent) = send_start(subscription, live, start, out).await? else {
        return Ok(());
    };
    loop {
        let received = tokio::select! {
            received = subscription.messages.recv() => received,
            _ = out.shutdown.cancelled() => return Ok(()),
            _ = out.sender.closed() => return Ok(()),
            _ = tokio::time::sleep_until(out.deadline) => return Ok(()),
        };
        match received {
            Ok(message) => {
                if sent.covers(&message) {
                    continue;
                }
                out.message(&message).await?;
                sent = Sent::of(&message);
                if message.last {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(action = %subscription.action, missed, "a slow stream client gets a fresh snapshot");
                let current = subscription.latest.borrow().clone();
                if let Some(current) = current {
                    out.snapshot(&current.view).await?;
                    if current.view.status.is_terminal() {
                        return Ok(());
                    }
                    sent = Sent {
                        seq: current.view.last_seq,
                        rank: COUNTS,
                    };
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Sends where the client starts; `None` when there is nothing more to send (the action
/// is finished).
async fn send_start(
    subscription: &Subscription,
    live: &Live,
    start: Start,
    out: &Out,
) -> Result<Option<Sent>, Gone> {
    let view = &live.view;
    let counted = Sent {
        seq: view.last_seq,
        rank: COUNTS,
    };
    match start {
        Start::Finished => Ok(None),
        Start::Snapshot => {
            out.snapshot(view).await?;
            Ok((!view.status.is_terminal()).then_some(counted))
        }
        Start::Recent { after } => {
            for change in live.changes.iter().filter(|change| change.seq > after) {
                out.message(change).await?;
            }
            if view.status.is_terminal() {
                out.final_message(view).await?;
                return Ok(None);
            }
            // The client has the counts at its last message, and a change carries them.
            let last_sent = live
                .changes
                .back()
                .map_or(after, |change| change.seq.max(after));
            if view.last_seq > last_sent {
                if let Ok(progress) = progress_of(view, None) {
                    out.message(&progress).await?;
                }
            }
            Ok(Some(counted))
        }
        Start::Stream {
            after,
            changes,
            through,
        } => {
            for change in &changes {
                let data = serde_json::to_string(&StatusChange {
                    action_id: Some(subscription.action),
                    change: change.name.to_owned(),
                    seq: change.seq,
                    occurred_at: change.occurred_at,
                    counts: None,
                })
                .unwrap_or_default();
                let status = domain::live::status_after(change.name).unwrap_or(view.status);
                out.send(Some(change.seq), change.name, &data, status)
                    .await?;
            }
            // The receiver holds every message after the watcher's view when it subscribed,
            // which is at most `through`: it brings what happened after `through`.
            let current = subscription
                .latest
                .borrow()
                .clone()
                .map_or_else(|| live.view.clone(), |current| current.view.clone());
            if current.status.is_terminal() && current.last_seq == through {
                out.final_message(&current).await?;
                return Ok(None);
            }
            if current.last_seq == through && through > after {
                if let Ok(progress) = progress_of(&current, None) {
                    out.message(&progress).await?;
                }
                return Ok(Some(Sent {
                    seq: through,
                    rank: COUNTS,
                }));
            }
            let rank = if changes.last().is_some_and(|last| last.seq == through) {
                REPLAYED
            } else {
                COUNTS
            };
            Ok(Some(Sent { seq: through, rank }))
        }
    }
}

/// The account stream: one follower per action, for the starting set and every new
/// action of the account, each writing to the same client. Ends when the client leaves,
/// its time is up, the api stops, or an action's view cannot be loaded (the client
/// reconnects and starts again).
pub async fn follow_account(
    hub: &LiveHub,
    account: &domain::AccountId,
    partition: u32,
    starting: Vec<ActionId>,
    resume: Option<(ActionId, u64)>,
    mut notices: broadcast::Receiver<(ActionId, domain::AccountId)>,
    out: Out,
) {
    let mut followers: tokio::task::JoinSet<(ActionId, Ended)> = tokio::task::JoinSet::new();
    let mut followed: HashSet<ActionId> = HashSet::new();
    for action in starting {
        let after = resume.and_then(|(resumed, seq)| (resumed == action).then_some(seq));
        start_follower(
            hub,
            account,
            action,
            after,
            &out,
            &mut followers,
            &mut followed,
        );
    }
    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                Ok((action, owner)) if owner == *account => {
                    start_follower(hub, account, action, None, &out, &mut followers, &mut followed);
                }
                Ok(_) => {}
                // Notices were dropped (a flood of new actions in the partition): read the
                // account's recent ones again rather than miss one.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    match hub.store().recent_actions(partition, super::lobby::since_ms(), super::lobby::READ_LIMIT).await {
                        Ok(recent) => {
                            for (action, owner) in recent {
                                if owner == *account {
                                    start_follower(hub, account, action, None, &out, &mut followers, &mut followed);
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "an account stream lost new-action notices; ending it");
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some(joined) = followers.join_next(), if !followers.is_empty() => {
                match joined {
                    Ok((action, Ended::Done)) => { followed.remove(&action); }
                    Ok((_, Ended::Unavailable)) | Err(_) => return,
                }
            }
            _ = out.shutdown.cancelled() => return,
            _ = out.sender.closed() => return,
            _ = tokio::time::sleep_until(out.deadline) => return,
        }
    }
}

fn start_follower(
    hub: &LiveHub,
    account: &domain::AccountId,
    action: ActionId,
    after: Option<u64>,
    out: &Out,
    followers: &mut tokio::task::JoinSet<(ActionId, Ended)>,
    followed: &mut HashSet<ActionId>,
) {
    if followed.contains(&action) || followed.len() >= super::ACCOUNT_STREAM_ACTIONS {
        return;
    }
    // An account at its watcher limit is not followed further on this stream.
    let Some(subscription) = hub.subscribe(action, account) else {
        return;
    };
    followed.insert(action);
    let out = Out {
        prefix: Some(action),
        ..out.clone()
    };
    let hub = hub.clone();
    followers.spawn(async move {
        let Ok(live) = super::loaded(&subscription).await else {
            return (action, Ended::Unavailable);
        };
        let start = match after {
            None => Start::Snapshot,
            Some(after) => match plan_resume(&hub, action, &live, after).await {
                Ok(start) => start,
                Err(_) => return (action, Ended::Unavailable),
            },
        };
        (action, follow(subscription, live, start, &out).await)
    });
}
