//! The one reader of an action's events in this process while anyone watches it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::live::{final_message, status_change, Progress, StatusChange};
use domain::view::apply_event;
use domain::ActionView;

use super::{ActionFeed, Live, LiveHub, Message, LINGER};
use crate::read_model::{folded_view, FoldedView};

/// How often a busy action's stream is read: `progress` goes out at most this often. Each
/// message costs every subscriber's connection a write (about 20 µs of api CPU on the
/// benchmark machine), so twice a second, not four times: 1,000 subscribers then cost
/// a running action under 5% of its throughput (docs/benchmarks.md), and a change of
/// status still reaches them well within a second.
const BUSY_POLL: Duration = Duration::from_millis(500);
/// How often an action with nothing new for `IDLE_AFTER` is read (a scheduled or paused
/// one): still under the 1 s a status change may take to reach a subscriber.
const IDLE_POLL: Duration = Duration::from_millis(750);
const IDLE_AFTER: Duration = Duration::from_secs(5);
/// How long to wait after a failed read (Redis or MongoDB unavailable), and how often a
/// stream whose events do not fold is looked at again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
const STUCK_POLL: Duration = Duration::from_secs(5);
/// Events read per round trip; a batch's event carries an outcome per record.
const PAGE_EVENTS: usize = 16;
/// Pages folded per poll, so one busy action cannot hold the task for long; the rest is
/// read at the next poll.
const PAGES_PER_POLL: usize = 64;
/// Status changes kept for resuming clients: one whose last message is among them resumes
/// without reading Redis.
const RECENT_CHANGES: usize = 64;

/// The watcher's own state between polls.
struct Watched {
    folded: FoldedView,
    live: Live,
    /// Its events stopped folding at the last reload too: looked at rarely, its view kept.
    stuck: bool,
}

pub(super) async fn run(hub: LiveHub, action: domain::ActionId, feed: Arc<ActionFeed>) {
    let shutdown = hub.shutdown();
    let mut state: Option<Watched> = None;
    let mut unwatched_since: Option<Instant> = None;
    let mut last_news = Instant::now();
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return hub.watcher_ended(action, &feed),
        }
        if feed.messages.receiver_count() == 0 {
            let since = *unwatched_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= LINGER && hub.release_if_unwatched(action, &feed) {
                return hub.watcher_ended(action, &feed);
            }
        } else {
            unwatched_since = None;
        }
        let Some(watched) = state.as_mut() else {
            pause = RETRY_PAUSE;
            match folded_view(hub.store(), &hub.inner.database, action).await {
                Ok(Some(folded)) => {
                    let live = Live::starting_at(folded.view.clone());
                    feed.latest.send_replace(Some(Arc::new(live.clone())));
                    state = Some(Watched {
                        folded,
                        live,
                        stuck: false,
                    });
                    pause = BUSY_POLL;
                }
                Ok(None) => tracing::warn!(%action, "a watched action has no view; retrying"),
                Err(error) => {
                    tracing::warn!(%action, error = ?error, "cannot load a watched action; retrying")
                }
            }
            continue;
        };
        if watched.folded.archived || watched.folded.view.status.is_terminal() {
            pause = IDLE_POLL;
            continue;
        }
        let polled = poll(&hub, &mut watched.folded).await;
        if !polled.messages.is_empty() {
            last_news = Instant::now();
            publish(
                &feed,
                &mut watched.live,
                &watched.folded.view,
                polled.messages,
            );
        }
        pause = if last_news.elapsed() > IDLE_AFTER {
            IDLE_POLL
        } else {
            BUSY_POLL
        };
        match polled.error {
            None => watched.stuck = false,
            // An outage: the position is kept and the read tried again.
            Some(PollError::Store(error)) => {
                tracing::warn!(%action, %error, "reading a watched action failed; retrying");
                pause = RETRY_PAUSE;
            }
            // Events that do not fold where this watcher stands: start again from the stored
            // view, and tell subscribers where that lands.
            Some(error) if watched.stuck => {
                tracing::debug!(%action, %error, "a watched action's events still do not fold");
                pause = STUCK_POLL;
            }
            Some(error) => {
                tracing::error!(%action, %error, "a watched action's events do not fold; reloading it");
                match reload(&hub, watched).await {
                    Ok(messages) => {
                        publish(&feed, &mut watched.live, &watched.folded.view, messages)
                    }
                    Err(error) => {
                        tracing::warn!(%action, %error, "reloading a watched action failed")
                    }
                }
                watched.stuck = true;
                pause = RETRY_PAUSE;
            }
        }
    }
}

/// The view first, then the messages: a subscriber that reads the view has every message
/// up to its seq in it, and every later one still to come.
fn publish(feed: &ActionFeed, live: &mut Live, view: &ActionView, messages: Vec<Message>) {
    let messages: Vec<Arc<Message>> = messages.into_iter().map(Arc::new).collect();
    live.view = view.clone();
    for message in &messages {
        if message.name != "progress" && !message.last {
            live.changes.push_back(message.clone());
            if live.changes.len() > RECENT_CHANGES {
                if let Some(dropped) = live.changes.pop_front() {
                    live.changes_after = dropped.seq;
                }
            }
        }
    }
    feed.latest.send_replace(Some(Arc::new(live.clone())));
    for message in messages {
        // No receiver is not an error: the view is kept for the next one.
        let _ = feed.messages.send(message);
    }
}

/// Loads the stored view again after events that did not fold. What happened in between
/// is not known as changes: the recent changes start over, and the counts (or the final
/// message) go out.
async fn reload(hub: &LiveHub, watched: &mut Watched) -> Result<Vec<Message>, PollError> {
    let action = watched.folded.view.action_id;
    let Some(folded) = folded_view(hub.store(), &hub.inner.database, action)
        .await
        .map_err(|error| PollError::Reload(format!("{error:?}")))?
    else {
        return Ok(Vec::new());
    };
    let advanced = folded.view.last_seq > watched.folded.view.last_seq;
    watched.live = Live::starting_at(folded.view.clone());
    watched.folded = folded;
    if !advanced {
        return Ok(Vec::new());
    }
    let view = &watched.folded.view;
    Ok(vec![if view.status.is_terminal() {
        final_of(view)?
    } else {
        progress_of(view, None)?
    }])
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Store(#[from] infra::StoreError),
    #[error(transparent)]
    Fold(#[from] domain::FoldError),
    #[error("rendering a message: {0}")]
    Render(#[from] serde_json::Error),
    #[error("reloading: {0}")]
    Reload(String),
}

/// What one poll made of the events that landed since the last one: the messages, in seq
/// order (status changes as they happened, then one `progress` or the final message), and
/// the error that stopped it, if one did. Messages of events folded before an error are
/// kept: `folded` has moved past them.
struct Polled {
    messages: Vec<Message>,
    error: Option<PollError>,
}

async fn poll(hub: &LiveHub, folded: &mut FoldedView) -> Polled {
    let before = folded.view.last_seq;
    let mut messages = Vec::new();
    let mut last_event_at = None;
    let error = fold_new_events(hub, folded, &mut messages, &mut last_event_at)
        .await
        .err();
    let finished = messages.last().is_some_and(|last: &Message| last.last);
    if folded.view.last_seq > before && !finished {
        match progress_of(&folded.view, last_event_at) {
            Ok(progress) => messages.push(progress),
            Err(rendering) => {
                return Polled {
                    messages,
                    error: Some(rendering.into()),
                }
            }
        }
    }
    Polled { messages, error }
}

async fn fold_new_events(
    hub: &LiveHub,
    folded: &mut FoldedView,
    messages: &mut Vec<Message>,
    last_event_at: &mut Option<domain::Timestamp>,
) -> Result<(), PollError> {
    let action = folded.view.action_id;
    for _ in 0..PAGES_PER_POLL {
        let page = hub
            .store()
            .read(action, folded.position.as_deref(), PAGE_EVENTS)
            .await?;
        for event in &page {
            let Some(next) = apply_event(Some(folded.view.clone()), &event.envelope)? else {
                continue;
            };
            folded.view = next;
            folded.position = Some(event.position.clone());
            let envelope = &event.envelope;
            *last_event_at = Some(envelope.occurred_at);
            match status_change(&envelope.payload, folded.view.status) {
                Some(name) if final_message(folded.view.status) == Some(name) => {
                    messages.push(final_of(&folded.view)?);
                    return Ok(());
                }
                Some(name) => {
                    let change = StatusChange {
                        action_id: None,
                        change: name.to_owned(),
                        seq: envelope.seq,
                        occurred_at: envelope.occurred_at,
                        counts: Some(Progress::of(
                            &folded.view,
                            Some(envelope.occurred_at),
                            infra::clock::now(),
                        )),
                    };
                    messages.push(Message::new(
                        envelope.seq,
                        name,
                        serde_json::to_string(&change)?,
                        folded.view.status,
                        false,
                    ));
                }
                None => {}
            }
        }
        // Only an empty page is caught up: a page is also cut short by its bytes, and an
        // action whose batches keep megabytes of records would otherwise fall behind by a
        // page a poll. One page is held at a time.
        if page.is_empty() {
            break;
        }
    }
    Ok(())
}

pub fn progress_of(
    view: &ActionView,
    last_event_at: Option<domain::Timestamp>,
) -> Result<Message, serde_json::Error> {
    let progress = Progress::of(view, last_event_at, infra::clock::now());
    Ok(Message::new(
        view.last_seq,
        "progress",
        serde_json::to_string(&progress)?,
        view.status,
        false,
    ))
}

/// The final message of a finished action: its statistics, as `GET .../stats` answers.
pub fn final_of(view: &ActionView) -> Result<Message, serde_json::Error> {
    Ok(Message::new(
        view.last_seq,
        final_message(view.status).unwrap_or("completed"),
        serde_json::to_string(&view.stats(infra::clock::now()))?,
        view.status,
        true,
    ))
}

impl Live {
    fn starting_at(view: ActionView) -> Self {
        Self {
            changes_after: view.last_seq,
            view,
            changes: VecDeque::new(),
        }
    }
}
