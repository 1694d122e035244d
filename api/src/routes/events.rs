//! Live progress over Server-Sent Events.
//!
//! `GET /bulk-actions/{id}/events` follows one action: its response body reads the
//! watcher's broadcast and writes the frames the watcher rendered, so a client that reads
//! slowly holds back only its own connection, and one that falls further behind than the
//! hub keeps gets a fresh snapshot instead of unbounded memory. `GET /bulk-actions/events`
//! follows every action of the key's account: a task per client merges one follower per
//! action into a small channel the body reads.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use domain::{ActionId, ActionStatus};
use futures::{StreamExt, TryStreamExt};
use infra::mongo::ACTION_VIEWS;
use infra::views::StoredActionView;
use mongodb::bson::doc;
use mongodb::options::FindOptions;
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::OwnedAction;
use crate::live::{self, LiveHub, Out, Start, StreamSlot};
use crate::query::{invalid, QueryPairs, QueryParams};
use crate::AppState;

const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Messages buffered per client between its task and its connection.
const CLIENT_BUFFER: usize = 32;

/// Follow one bulk action's progress as Server-Sent Events.
///
/// A `snapshot` (the action view) at once, then a message per change of status
/// (`released`, `started`, `paused`, `resumed`, `cancelling`, `rescheduled`,
/// `pacingChanged`), `progress` (counts, progress, rate) at most twice a second while
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
    let hub = &state.live;
    let slot = open_slot(hub, &caller)?;
    let subscription = hub
        .subscribe(action, &caller.account)
        .ok_or_else(|| too_many_streams(hub))?;
    let live = live::loaded(&subscription)
        .await
        .map_err(|_| not_loaded())?;
    let start = match after {
        None => Start::Snapshot,
        Some(after) => live::plan_resume(hub, action, &live, after).await?,
    };
    if matches!(start, Start::Finished) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let lifetime = hub.stream_lifetime();
    let deadline = tokio::time::Instant::now() + lifetime;
    let shutdown = hub.shutdown();
    let frames = live::action_stream(
        subscription,
        live,
        start,
        deadline,
        shutdown.clone(),
        KEEP_ALIVE,
    )
    .await
    // The slot is the stream's: released when the body is dropped.
    .map(move |frame| {
        let _ = &slot;
        Ok::<_, Infallible>(frame)
    })
    .take_until(tokio::time::sleep_until(deadline))
    .take_until(shutdown.cancelled_owned());
    Ok(sse_response(Body::from_stream(frames)))
}

/// Follow every bulk action of the key's account as Server-Sent Events.
///
/// For dashboards: a `snapshot` of each unfinished action of the account (the 100 newest),
/// then the messages of `GET /bulk-actions/{actionId}/events` for each, and a `snapshot`
/// of every action created after the stream opened, within about a second. Ids are
/// `<actionId>:<seq>`; resuming with one resumes that action, every other one starts from
/// a snapshot. `status` (comma-separated) sends only the messages after which the action
/// has one of those statuses. The stream stays open until the client leaves or its
/// lifetime (`SSE_MAX_STREAM_SECONDS`) ends.
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
    let lifetime = hub.stream_lifetime();
    let out = Out {
        sender,
        prefix: None,
        statuses,
        deadline: tokio::time::Instant::now() + lifetime,
        shutdown: hub.shutdown(),
    };
    let account = caller.account.clone();
    tokio::spawn(async move {
        live::follow_account(&hub, &account, partition, starting, resume, notices, out).await;
        drop(slot);
    });
    Ok(event_stream(receiver, lifetime))
}

/// The response body: the task's frames and a keep-alive comment every 15 s, ended after
/// `lifetime` (the client resumes where it was), which spreads long-lived clients over api
/// processes as they come and go and lets a drained process' clients move on. Frames are
/// bytes rendered once per message for every subscriber of the action, not per client.
fn event_stream(receiver: mpsc::Receiver<Bytes>, lifetime: Duration) -> Response {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let frames = futures::stream::unfold(
        (receiver, keep_alive),
        |(mut receiver, mut keep_alive)| async move {
            let frame = tokio::select! {
                frame = receiver.recv() => frame?,
                _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            };
            Some((Ok::<_, Infallible>(frame), (receiver, keep_alive)))
        },
    )
    .take_until(tokio::time::sleep(lifetime));
    sse_response(Body::from_stream(frames))
}

fn sse_response(body: Body) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Proxies that buffer responses (nginx) would hold the messages back.
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response()
}

/// One SSE message. Ids, names and JSON data hold no line breaks (serde_json escapes
/// them), so each field is one line.
pub fn frame(id: Option<&str>, name: &str, data: &str) -> Bytes {
    Bytes::from(match id {
        Some(id) => format!("id: {id}\nevent: {name}\ndata: {data}\n\n"),
        None => format!("event: {name}\ndata: {data}\n\n"),
    })
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
    hub.open_stream(&caller.account)
        .ok_or_else(|| too_many_streams(hub))
}

fn too_many_streams(hub: &LiveHub) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyStreams,
        "the account has as many event streams open as it may; close one first",
    )
    .with_details(serde_json::json!({ "limit": hub.max_streams_per_account() }))
    .with_retry_after(1)
}

fn not_loaded() -> ApiError {
    crate::error::unavailable("redis", &"the action's events could not be read in time")
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
        .sort(doc! { "createdAt": -1 })
        .limit(live::ACCOUNT_STREAM_ACTIONS as i64)
        .batch_size(live::ACCOUNT_STREAM_ACTIONS as u32)
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
    actions.truncate(live::ACCOUNT_STREAM_ACTIONS);
    Ok(actions)
}

/// One message of an event stream, as the OpenAPI document describes it (`text/event-stream`
/// carries a sequence of these).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ServerSentEvent {
    /// `<seq>`, or `<actionId>:<seq>` on the account stream; absent on the snapshot of a
    /// finished action (its final message, which follows, has it).
    id: Option<String>,
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
