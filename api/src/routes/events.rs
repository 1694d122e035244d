//! Live progress over Server-Sent Events.
//!
//! `GET /bulk-actions/{id}/events` follows one action, `GET /bulk-actions/events` every
//! action of the key's account. Each stream is a task that writes into a small channel the
//! response body reads: a client that reads slowly fills it, its task stops taking
//! messages, and when it falls further behind than the hub keeps it gets a fresh snapshot
//! instead of unbounded memory.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use domain::live::{final_message, StatusChange};
use domain::{ActionId, ActionStatus, ActionView};
use futures::{StreamExt, TryStreamExt};
use infra::mongo::ACTION_VIEWS;
use infra::views::StoredActionView;
use mongodb::bson::doc;
use mongodb::options::FindOptions;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::OwnedAction;
use crate::live::{
    final_of, progress_of, status_changes_after, LiveHub, Message, Replay, StreamSlot, Subscription,
};
use crate::query::{invalid, QueryPairs, QueryParams};
use crate::AppState;

/// Events a resuming client may have missed and still be sent them one by one; further
/// back, it gets a snapshot (docs/decisions/0053).
pub const RESUME_EVENTS: usize = 256;
/// Actions one account stream follows at once (the newest unfinished ones).
pub const ACCOUNT_STREAM_ACTIONS: usize = 100;
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a stream waits for its watcher's first view before answering 503.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages buffered per client between its task and its connection.
const CLIENT_BUFFER: usize = 32;

/// Follow one bulk action's progress as Server-Sent Events.
///
/// A `snapshot` (the action view) at once, then a message per change of status
/// (`released`, `started`, `paused`, `resumed`, `cancelling`, `rescheduled`,
/// `pacingChanged`), `progress` (counts, progress, rate) at most 4 times a second while
/// records settle, and a final `completed`, `failed` or `cancelled` carrying the action's
/// statistics, after which the stream ends. Every message's `id` is the seq of the last
/// event it reflects: reconnect with `Last-Event-ID` (or `?after=`) to get the status
/// changes after it and the current counts, nothing lost and nothing repeated. When more
/// than 256 events lie after it, or the stream is archived, the answer starts with a fresh
/// `snapshot`. A finished action whose final message the client has seen answers `204`.
/// A comment every 15 s keeps idle connections open; a stream ends after
/// `SSE_MAX_STREAM_SECONDS` (an hour by default), and the client resumes.
#[utoipa::path(get, path = "/bulk-actions/{actionId}/events", tag = "bulk-actions",
    params(
        ("actionId" = String, Path, description = "ULID of the action"),
        ("after" = Option<u64>, Query, description = "Resume after this message id (as `Last-Event-ID`)"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last message received"),
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = ServerSentEvent),
        (status = 204, description = "The action is finished and its final message was seen"),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, description = "Too many streams open for the account (`too_many_streams`) or request budget spent", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub async fn action_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OwnedAction(action): OwnedAction,
    headers: HeaderMap,
    QueryPairs(pairs): QueryPairs,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(pairs, &["after"])?;
    let after = match params.parsed("after", |raw| raw.parse::<u64>().ok())? {
        Some(after) => Some(after),
        None => last_event_id(&headers).and_then(|id| id.parse::<u64>().ok()),
    };
    let slot = open_slot(&state.live, &caller)?;
    let subscription = state.live.subscribe(action);
    let view = loaded_view(&subscription).await?;
    if view.status.is_terminal() && after == Some(view.last_seq) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let (sender, receiver) = mpsc::channel(CLIENT_BUFFER);
    let out = Out {
        sender,
        prefix: None,
        statuses: None,
    };
    let hub = state.live.clone();
    tokio::spawn(async move {
        follow(&hub, subscription, after, &out).await;
        drop(slot);
    });
    Ok(event_stream(receiver, state.live.stream_lifetime()))
}

/// Follow every bulk action of the key's account as Server-Sent Events.
///
/// For dashboards: a `snapshot` of each unfinished action of the account (the 100 newest),
/// then the messages of `GET /bulk-actions/{actionId}/events` for each, and a `snapshot`
/// of every action created after the stream opened, within about a second. Ids are
/// `<actionId>:<seq>`; resuming with one resumes that action, every other one starts from
/// a snapshot. `status` (comma-separated) sends only the messages after which the action
/// has one of those statuses. The stream stays open until the client leaves.
#[utoipa::path(get, path = "/bulk-actions/events", tag = "bulk-actions",
    params(
        ("status" = Option<String>, Query, description = "Comma-separated statuses, e.g. `running,paused`", pattern = r"^(scheduled|queued|running|paused|cancelling|completed|failed|cancelled)(,(scheduled|queued|running|paused|cancelling|completed|failed|cancelled))*$"),
        ("after" = Option<String>, Query, description = "Resume after this message id (as `Last-Event-ID`): `<actionId>:<seq>`", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}:[0-9]+$"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last message received"),
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = ServerSentEvent),
        (status = 400, body = ErrorBody),
        (status = 429, description = "Too many streams open for the account (`too_many_streams`) or request budget spent", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub async fn account_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    QueryPairs(pairs): QueryPairs,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(pairs, &["status", "after"])?;
    let statuses = params.parsed("status", parse_statuses)?.map(Arc::new);
    let resume = match params.text("after") {
        Some(raw) => Some(
            parse_account_id(raw)
                .ok_or_else(|| invalid("after", "is not a message id of this stream"))?,
        ),
        None => last_event_id(&headers).and_then(|id| parse_account_id(&id)),
    };
    let slot = open_slot(&state.live, &caller)?;
    let partition = state.store.keys().account_partition(&caller.account);
    // Before the starting set is read, so that no action falls between the two.
    let notices = state.live.new_actions(partition);
    let mut starting = unfinished_actions(&state, &caller).await?;
    if let Some((action, _)) = resume {
        if !starting.contains(&action)
            && state.store.account_of(action).await? == Some(caller.account.clone())
        {
            starting.insert(0, action);
        }
    }
    let (sender, receiver) = mpsc::channel(CLIENT_BUFFER);
    let hub = state.live.clone();
    let account = caller.account.clone();
    tokio::spawn(async move {
        follow_account(&hub, &account, starting, resume, notices, sender, statuses).await;
        drop(slot);
    });
    Ok(event_stream(receiver, state.live.stream_lifetime()))
}

/// The response body: the task's messages, ended after `lifetime` (the client resumes
/// where it was), which spreads long-lived clients over api processes as they come and
/// go and lets a drained process' clients move on.
fn event_stream(receiver: mpsc::Receiver<Event>, lifetime: Duration) -> Response {
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((Ok::<_, Infallible>(event), receiver))
    })
    .take_until(tokio::time::sleep(lifetime));
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Proxies that buffer responses (nginx) would hold the messages back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_owned())
}

fn parse_account_id(raw: &str) -> Option<(ActionId, u64)> {
    let (action, seq) = raw.split_once(':')?;
    Some((ActionId::parse(action)?, seq.parse().ok()?))
}

fn parse_statuses(raw: &str) -> Option<HashSet<ActionStatus>> {
    raw.split(',')
        .map(|status| ActionStatus::parse(status.trim()))
        .collect()
}

fn open_slot(hub: &LiveHub, caller: &Caller) -> Result<StreamSlot, ApiError> {
    hub.open_stream(&caller.account).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyStreams,
            "the account has as many event streams open as it may; close one first",
        )
        .with_details(serde_json::json!({ "limit": hub.max_streams_per_account() }))
        .with_retry_after(1)
    })
}

async fn loaded_view(subscription: &Subscription) -> Result<Arc<ActionView>, ApiError> {
    let mut latest = subscription.latest.clone();
    let loaded = tokio::time::timeout(LOAD_TIMEOUT, latest.wait_for(Option::is_some)).await;
    match loaded {
        Ok(Ok(view)) => view
            .clone()
            .ok_or_else(|| ApiError::internal("a loaded view is missing")),
        _ => Err(crate::error::unavailable(
            "redis",
            &"the action's events could not be read in time",
        )),
    }
}

/// The unfinished actions of the account, newest first, from the projected views and the
/// partition's recent actions (accepted a moment ago, maybe not projected yet).
async fn unfinished_actions(state: &AppState, caller: &Caller) -> Result<Vec<ActionId>, ApiError> {
    let unfinished: Vec<&str> = ActionStatus::ALL
        .iter()
        .filter(|status| !status.is_terminal())
        .map(|status| status.as_str())
        .collect();
    let options = FindOptions::builder()
        .sort(doc! { "createdAt": -1, "_id": -1 })
        .limit(ACCOUNT_STREAM_ACTIONS as i64)
        .batch_size(ACCOUNT_STREAM_ACTIONS as u32)
        .build();
    let views: Vec<StoredActionView> = state
        .database
        .collection::<StoredActionView>(ACTION_VIEWS)
        .find(doc! { "accountId": caller.account.as_str(), "status": { "$in": unfinished } })
        .with_options(options)
        .await?
        .try_collect()
        .await?;
    let partition = state.store.keys().account_partition(&caller.account);
    let since_ms = infra::clock::now().millis() - 30_000;
    let recent = state.store.recent_actions(partition, since_ms, 512).await?;
    let mut actions: Vec<ActionId> = recent
        .into_iter()
        .filter(|(_, account)| *account == caller.account)
        .map(|(action, _)| action)
        .collect();
    for view in views {
        if !actions.contains(&view.view.action_id) {
            actions.push(view.view.action_id);
        }
    }
    // Newest first: ULIDs order by creation.
    actions.sort_by(|a, b| b.cmp(a));
    actions.truncate(ACCOUNT_STREAM_ACTIONS);
    Ok(actions)
}

/// One message of an event stream, as the OpenAPI document describes it (`text/event-stream`
/// carries a sequence of these).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ServerSentEvent {
    /// `<seq>`, or `<actionId>:<seq>` on the account stream.
    id: String,
    /// `snapshot`, `progress`, a change of status, or the final `completed`, `failed` or
    /// `cancelled`.
    #[schema(
        pattern = "^(snapshot|progress|released|started|paused|resumed|cancelling|rescheduled|pacingChanged|completed|failed|cancelled)$"
    )]
    event: String,
    /// JSON: the action view (`snapshot`), its counts (`progress`, a change of status) or
    /// its statistics (the final message).
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Where a follower writes: one client's channel, the id form of its stream, its filter.
#[derive(Clone)]
struct Out {
    sender: mpsc::Sender<Event>,
    /// `Some(action)`: ids are `<action>:<seq>` (the account stream).
    prefix: Option<ActionId>,
    statuses: Option<Arc<HashSet<ActionStatus>>>,
}

/// The client has gone.
struct Gone;

impl Out {
    async fn send(
        &self,
        seq: u64,
        name: &str,
        data: &str,
        status: ActionStatus,
    ) -> Result<(), Gone> {
        if self
            .statuses
            .as_ref()
            .is_some_and(|statuses| !statuses.contains(&status))
        {
            return Ok(());
        }
        let id = match self.prefix {
            Some(action) => format!("{action}:{seq}"),
            None => seq.to_string(),
        };
        let event = Event::default().id(id).event(name).data(data);
        self.sender.send(event).await.map_err(|_| Gone)
    }

    async fn message(&self, message: &Message) -> Result<(), Gone> {
        self.send(message.seq, message.name, &message.data, message.status)
            .await
    }

    async fn snapshot(&self, view: &ActionView) -> Result<(), Gone> {
        let data = serde_json::to_string(view).unwrap_or_default();
        self.send(view.last_seq, "snapshot", &data, view.status)
            .await?;
        self.finish_if_final(view).await
    }

    async fn finish_if_final(&self, view: &ActionView) -> Result<(), Gone> {
        if final_message(view.status).is_some() {
            if let Ok(last) = final_of(view) {
                self.message(&last).await?;
            }
        }
        Ok(())
    }
}

/// Where a client stands: the seq of the last message sent and its rank at that seq (a
/// status change, then the counts, then the final message), which orders the messages the
/// watcher made of one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Sent {
    seq: u64,
    rank: u8,
}

const CHANGE: u8 = 0;
const COUNTS: u8 = 1;
const FINAL: u8 = 2;

impl Sent {
    fn of(message: &Message) -> Self {
        // Every live message carries the counts at its seq; only a change replayed from
        // the stream does not, and it never goes through here.
        let rank = if message.last { FINAL } else { COUNTS };
        Sent {
            seq: message.seq,
            rank,
        }
    }
}

/// Sends one action's messages to `out` until it finishes, the client leaves or the api
/// stops.
async fn follow(hub: &LiveHub, mut subscription: Subscription, after: Option<u64>, out: &Out) {
    let _ = follow_inner(hub, &mut subscription, after, out).await;
}

async fn follow_inner(
    hub: &LiveHub,
    subscription: &mut Subscription,
    after: Option<u64>,
    out: &Out,
) -> Result<(), Gone> {
    let Ok(view) = loaded_view(subscription).await else {
        return Ok(());
    };
    let mut sent = match after {
        Some(after) => match resume(hub, subscription, &view, after, out).await? {
            Some(sent) => sent,
            None => {
                out.snapshot(&view).await?;
                Sent {
                    seq: view.last_seq,
                    rank: COUNTS,
                }
            }
        },
        None => {
            out.snapshot(&view).await?;
            Sent {
                seq: view.last_seq,
                rank: COUNTS,
            }
        }
    };
    if view.status.is_terminal() {
        return Ok(());
    }
    let shutdown = hub.shutdown();
    loop {
        let received = tokio::select! {
            received = subscription.messages.recv() => received,
            _ = shutdown.cancelled() => return Ok(()),
            _ = out.sender.closed() => return Ok(()),
        };
        match received {
            Ok(message) => {
                let replayed = message.seq == sent.seq
                    && sent.rank == CHANGE
                    && message.name != "progress"
                    && !message.last;
                if Sent::of(&message) <= sent || replayed {
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
                    out.snapshot(&current).await?;
                    sent = Sent {
                        seq: current.last_seq,
                        rank: COUNTS,
                    };
                    if current.status.is_terminal() {
                        return Ok(());
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Sends what happened after `after`: the status changes read back from the stream, then
/// the current counts (or the final message). `None`: it cannot be resumed from there.
async fn resume(
    hub: &LiveHub,
    subscription: &Subscription,
    view: &ActionView,
    after: u64,
    out: &Out,
) -> Result<Option<Sent>, Gone> {
    let replay = status_changes_after(hub.store(), subscription.action, after, RESUME_EVENTS).await;
    let (changes, through) = match replay {
        Ok(Replay::Changes { changes, through }) if after <= through => (changes, through),
        Ok(_) => return Ok(None),
        Err(error) => {
            tracing::warn!(action = %subscription.action, %error, "cannot read back a resumed stream; sending a snapshot");
            return Ok(None);
        }
    };
    for change in &changes {
        let data = serde_json::to_string(&StatusChange {
            action_id: subscription.action,
            change: change.name.to_owned(),
            seq: change.seq,
            occurred_at: change.occurred_at,
            counts: None,
        })
        .unwrap_or_default();
        out.send(change.seq, change.name, &data, view.status)
            .await?;
    }
    // The view may have been loaded before the replay's read: take the newest.
    let current = subscription
        .latest
        .borrow()
        .clone()
        .unwrap_or_else(|| Arc::new(view.clone()));
    if current.status.is_terminal() {
        if current.last_seq > after {
            out.finish_if_final(&current).await?;
        }
        return Ok(Some(Sent {
            seq: current.last_seq,
            rank: COUNTS,
        }));
    }
    // The client has the counts at `after` (every live message carries them): a progress
    // goes out only when they moved since.
    if current.last_seq >= through && current.last_seq > after {
        if let Ok(progress) = progress_of(&current, None) {
            out.message(&progress).await?;
        }
        return Ok(Some(Sent {
            seq: current.last_seq,
            rank: COUNTS,
        }));
    }
    let rank = if through > after { CHANGE } else { COUNTS };
    Ok(Some(Sent { seq: through, rank }))
}

/// The account stream: one follower per action, started for the starting set and for
/// every new action of the account, each writing to the same client.
async fn follow_account(
    hub: &LiveHub,
    account: &domain::AccountId,
    starting: Vec<ActionId>,
    resume: Option<(ActionId, u64)>,
    mut notices: broadcast::Receiver<(ActionId, domain::AccountId)>,
    sender: mpsc::Sender<Event>,
    statuses: Option<Arc<HashSet<ActionStatus>>>,
) {
    let mut followers: JoinSet<ActionId> = JoinSet::new();
    let mut followed: HashMap<ActionId, ()> = HashMap::new();
    let start = |followers: &mut JoinSet<ActionId>, action: ActionId, after: Option<u64>| {
        let out = Out {
            sender: sender.clone(),
            prefix: Some(action),
            statuses: statuses.clone(),
        };
        let hub = hub.clone();
        let subscription = hub.subscribe(action);
        followers.spawn(async move {
            follow(&hub, subscription, after, &out).await;
            action
        });
    };
    for action in starting {
        let after = resume.and_then(|(resumed, seq)| (resumed == action).then_some(seq));
        followed.insert(action, ());
        start(&mut followers, action, after);
    }
    let shutdown = hub.shutdown();
    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                Ok((action, owner)) => {
                    if owner == *account
                        && !followed.contains_key(&action)
                        && followed.len() < ACCOUNT_STREAM_ACTIONS
                    {
                        followed.insert(action, ());
                        start(&mut followers, action, None);
                    }
                }
                // Missed notices are of a partition flooded with new actions; the
                // ones that follow are still served.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some(Ok(finished)) = followers.join_next(), if !followers.is_empty() => {
                followed.remove(&finished);
            }
            _ = shutdown.cancelled() => return,
            _ = sender.closed() => return,
        }
    }
}
