//! The one reader of an action's events in this process while anyone watches it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::live::{final_message, status_change, Progress, StatusChange};
use domain::view::apply_event;
use domain::ActionView;

use super::{ActionFeed, LiveHub, Message, LINGER};
use crate::read_model::{folded_view, FoldedView};

/// How often a busy action's stream is read: `progress` goes out at most this often.
const BUSY_POLL: Duration = Duration::from_millis(250);
/// How often an action with nothing new for `IDLE_AFTER` is read (a scheduled or paused
/// one): still under the 1 s a status change may take to reach a subscriber.
const IDLE_POLL: Duration = Duration::from_millis(750);
const IDLE_AFTER: Duration = Duration::from_secs(5);
/// Events read per round trip; a batch's event carries an outcome per record.
const PAGE_EVENTS: usize = 16;
/// Pages folded per poll, so one busy action cannot hold the task for long; the rest is
/// read at the next poll.
const PAGES_PER_POLL: usize = 64;

pub(super) async fn run(hub: LiveHub, action: domain::ActionId, feed: Arc<ActionFeed>) {
    let shutdown = hub.shutdown();
    let mut state: Option<FoldedView> = None;
    let mut unwatched_since: Option<Instant> = None;
    let mut last_news = Instant::now();
    loop {
        let pause = if last_news.elapsed() > IDLE_AFTER {
            IDLE_POLL
        } else {
            BUSY_POLL
        };
        if state.is_some() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        if feed.messages.receiver_count() == 0 {
            let since = *unwatched_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= LINGER && hub.release_if_unwatched(action, &feed) {
                return;
            }
        } else {
            unwatched_since = None;
        }
        let Some(folded) = state.as_mut() else {
            match folded_view(hub.store(), &hub.inner.database, action).await {
                Ok(Some(loaded)) => {
                    feed.latest
                        .send_replace(Some(Arc::new(loaded.view.clone())));
                    state = Some(loaded);
                }
                Ok(None) => {
                    tracing::warn!(%action, "a watched action has no view; retrying");
                    wait_or_shutdown(&shutdown, Duration::from_secs(1)).await;
                }
                Err(error) => {
                    tracing::warn!(%action, error = ?error, "cannot load a watched action; retrying");
                    wait_or_shutdown(&shutdown, Duration::from_secs(1)).await;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        };
        if folded.archived || folded.view.status.is_terminal() {
            continue;
        }
        match poll(&hub, folded).await {
            Ok(messages) if messages.is_empty() => {}
            Ok(messages) => {
                last_news = Instant::now();
                feed.latest
                    .send_replace(Some(Arc::new(folded.view.clone())));
                for message in messages {
                    // No receiver is not an error: the view is kept for the next one.
                    let _ = feed.messages.send(Arc::new(message));
                }
            }
            Err(error) => {
                tracing::warn!(%action, %error, "reading a watched action failed; reloading it");
                state = None;
                wait_or_shutdown(&shutdown, Duration::from_secs(1)).await;
            }
        }
    }
}

async fn wait_or_shutdown(shutdown: &tokio_util::sync::CancellationToken, pause: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Store(#[from] infra::StoreError),
    #[error(transparent)]
    Fold(#[from] domain::FoldError),
    #[error("rendering a message: {0}")]
    Render(#[from] serde_json::Error),
}

/// Folds the events that landed since the last poll; returns the messages they make, in
/// seq order: status changes as they happened, then one `progress` (or the final message).
async fn poll(hub: &LiveHub, folded: &mut FoldedView) -> Result<Vec<Message>, PollError> {
    let action = folded.view.action_id;
    let mut messages = Vec::new();
    let before = folded.view.last_seq;
    let mut last_event_at = None;
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
            last_event_at = Some(envelope.occurred_at);
            match status_change(&envelope.payload, folded.view.status) {
                Some(name) if final_message(folded.view.status) == Some(name) => {
                    messages.push(final_of(&folded.view)?);
                    return Ok(messages);
                }
                Some(name) => messages.push(Message {
                    seq: envelope.seq,
                    name,
                    data: serde_json::to_string(&StatusChange {
                        action_id: action,
                        change: name.to_owned(),
                        seq: envelope.seq,
                        occurred_at: envelope.occurred_at,
                        counts: Some(Progress::of(
                            &folded.view,
                            Some(envelope.occurred_at),
                            infra::clock::now(),
                        )),
                    })?,
                    status: folded.view.status,
                    last: false,
                }),
                None => {}
            }
        }
        if page.len() < PAGE_EVENTS {
            break;
        }
    }
    // A change of the last event folded carries the counts already.
    let counted = messages
        .last()
        .is_some_and(|last: &Message| last.seq == folded.view.last_seq);
    if folded.view.last_seq > before && !counted {
        messages.push(progress_of(&folded.view, last_event_at)?);
    }
    Ok(messages)
}

pub fn progress_of(
    view: &ActionView,
    last_event_at: Option<domain::Timestamp>,
) -> Result<Message, serde_json::Error> {
    Ok(Message {
        seq: view.last_seq,
        name: "progress",
        data: serde_json::to_string(&Progress::of(view, last_event_at, infra::clock::now()))?,
        status: view.status,
        last: false,
    })
}

/// The final message of a finished action: its statistics, as `GET .../stats` answers.
pub fn final_of(view: &ActionView) -> Result<Message, serde_json::Error> {
    Ok(Message {
        seq: view.last_seq,
        name: final_message(view.status).unwrap_or("completed"),
        data: serde_json::to_string(&view.stats(infra::clock::now()))?,
        status: view.status,
        last: true,
    })
}
