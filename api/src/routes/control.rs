//! Changing an action after submission: cancel, pause, resume, and PATCH of its start time
//! and pace. Each is one atomic script in Redis plus an event in the action's stream; the
//! answer is the action as it stands right after (read your own writes).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use domain::{ActionId, ActionView, EventPayload};
use infra::flow::{Amendment, Control, ControlOutcome};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::actions::{parse_action_id, require_json, schedule_refused};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::{read_model, submission, AppState};

/// Cancel a bulk action.
///
/// Stops a scheduled, queued, running or paused action. Batches already being applied
/// finish; every other record ends `unprocessed`. Idempotent: cancelling a cancelled action
/// answers with it again.
#[utoipa::path(post, path = "/bulk-actions/{actionId}/cancel", tag = "bulk-actions",
    params(("actionId" = String, Path, description = "ULID of the action")),
    responses(
        (status = 200, description = "Status `cancelling`, then `cancelled` once the batches in flight have settled", body = ActionView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The action has finished (`action_finished`)", body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Json<ActionView>, ApiError> {
    command(&state, &caller, &raw_id, Control::Cancel).await
}

/// Pause a bulk action.
///
/// The action keeps its place and takes no processing budget until resumed; batches being
/// applied at that moment finish. Idempotent.
#[utoipa::path(post, path = "/bulk-actions/{actionId}/pause", tag = "bulk-actions",
    params(("actionId" = String, Path, description = "ULID of the action")),
    responses(
        (status = 200, description = "Status `paused`", body = ActionView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`action_finished` or `action_cancelling`", body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Json<ActionView>, ApiError> {
    command(&state, &caller, &raw_id, Control::Pause).await
}

/// Resume a paused bulk action where it was. Resuming an action that is not paused changes
/// nothing.
#[utoipa::path(post, path = "/bulk-actions/{actionId}/resume", tag = "bulk-actions",
    params(("actionId" = String, Path, description = "ULID of the action")),
    responses(
        (status = 200, body = ActionView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`action_finished` or `action_cancelling`", body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Json<ActionView>, ApiError> {
    command(&state, &caller, &raw_id, Control::Resume).await
}

async fn command(
    state: &AppState,
    caller: &Caller,
    raw_id: &str,
    command: Control,
) -> Result<Json<ActionView>, ApiError> {
    let action = owned_action(state, caller, raw_id).await?;
    let outcome = state
        .store
        .control(action, command, infra::clock::now(), Some(&caller.key_id))
        .await?;
    refused(outcome)?;
    if outcome == ControlOutcome::Done {
        tracing::info!(%action, ?command, "action controlled");
    }
    current_view(state, action).await
}

/// The body of `PATCH /bulk-actions/{actionId}`; absent fields stay as they are, `null`
/// removes a pace.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AmendRequest {
    /// A new start; only while the action is `scheduled`.
    #[schema(value_type = Option<String>, format = DateTime, example = "2030-03-20T10:00:00Z")]
    scheduled_for: Option<String>,
    pacing: Option<domain::Pacing>,
    #[schema(minimum = 1, maximum = 10000000)]
    max_records_per_minute: Option<u32>,
}

const AMEND_FIELDS: [&str; 3] = ["scheduledFor", "pacing", "maxRecordsPerMinute"];

/// Move a scheduled action's start, or change an action's pace.
///
/// `scheduledFor` can move while the action is `scheduled` (paused or not); `pacing` and
/// `maxRecordsPerMinute` can change until the action ends, and apply to the batches not yet
/// handed out.
#[utoipa::path(patch, path = "/bulk-actions/{actionId}", tag = "bulk-actions",
    params(("actionId" = String, Path, description = "ULID of the action")),
    request_body(content = AmendRequest, content_type = "application/json"),
    responses(
        (status = 200, body = ActionView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`action_finished`, `action_cancelling` or `action_already_released`", body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn amend(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ActionView>, ApiError> {
    let action = owned_action(&state, &caller, &raw_id).await?;
    require_json(&headers)?;
    let body =
        body.map_err(|rejection| ApiError::bad_request("unreadable_body", rejection.body_text()))?;
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object of scheduledFor, pacing and maxRecordsPerMinute",
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|key| !AMEND_FIELDS.contains(&key.as_str()))
    {
        return Err(
            ApiError::bad_request("unknown_field", format!("unknown field {}", domain::text::quoted(unknown)))
                .with_details(json!({ "field": domain::text::bounded(unknown, domain::text::ECHO_MAX_BYTES), "allowed": AMEND_FIELDS })),
        );
    }
    if fields.is_empty() {
        return Err(ApiError::bad_request(
            "empty_patch",
            "nothing to change: give scheduledFor, pacing or maxRecordsPerMinute",
        ));
    }
    let mut amendment = Amendment {
        api_key_id: Some(caller.key_id.clone()),
        ..Amendment::default()
    };
    if fields.contains_key("scheduledFor") {
        let requested =
            submission::scheduled_for(fields.get("scheduledFor"))?.ok_or_else(|| {
                ApiError::bad_request("invalid_scheduled_for", "scheduledFor cannot be null")
                    .with_details(json!({ "field": "scheduledFor" }))
            })?;
        let now = infra::clock::now();
        let start =
            domain::schedule::start_time(Some(requested), now, state.config.schedule_horizon_days)
                .map_err(schedule_refused)?;
        // `None` is "start now": the action moves to the front of the schedule, and the
        // script refuses it like any other move if it has already left the schedule.
        amendment.start_at = Some(start.unwrap_or(now));
    }
    if fields.contains_key("pacing") || fields.contains_key("maxRecordsPerMinute") {
        let (pacing, max) = submission::pace(&fields)?;
        let current = current_view(&state, action).await?.0;
        let pacing = if fields.contains_key("pacing") {
            pacing
        } else {
            current.pacing
        };
        let max = if fields.contains_key("maxRecordsPerMinute") {
            max
        } else {
            current.max_records_per_minute
        };
        let batch_size = state
            .store
            .batch_size_of(action)
            .await?
            .unwrap_or(state.config.batch_size as u32);
        let bucket = domain::pacing::action_bucket(pacing, max, batch_size);
        let event = EventPayload::PacingChanged {
            pacing,
            max_records_per_minute: max,
            api_key_id: Some(caller.key_id.clone()),
        };
        amendment.pace = Some((bucket, event));
    }
    let outcome = state
        .store
        .amend(action, &amendment, infra::clock::now())
        .await?;
    refused(outcome)?;
    tracing::info!(%action, "action amended");
    current_view(&state, action).await
}

/// Finds the action among the caller's account's. Another account's action is `404`,
/// exactly like one that does not exist: the answer must not tell.
pub async fn owned_action(
    state: &AppState,
    caller: &Caller,
    raw_id: &str,
) -> Result<ActionId, ApiError> {
    let action = parse_action_id(raw_id)?;
    match state.store.account_of(action).await? {
        Some(account) if account == caller.account => Ok(action),
        _ => Err(ApiError::action_not_found()),
    }
}

fn refused(outcome: ControlOutcome) -> Result<(), ApiError> {
    let conflict = |code, message: &str| Err(ApiError::new(StatusCode::CONFLICT, code, message));
    match outcome {
        ControlOutcome::Done | ControlOutcome::AlreadySo => Ok(()),
        ControlOutcome::UnknownAction => Err(ApiError::action_not_found()),
        ControlOutcome::Finished => conflict(
            "action_finished",
            "the action has finished: every record has an outcome",
        ),
        ControlOutcome::BeingCancelled => {
            conflict("action_cancelling", "the action is being cancelled")
        }
        ControlOutcome::AlreadyReleased => conflict(
            "action_already_released",
            "the action's start time has come; only a scheduled action can be moved",
        ),
    }
}

async fn current_view(state: &AppState, action: ActionId) -> Result<Json<ActionView>, ApiError> {
    read_model::action_view(state, action)
        .await?
        .map(Json)
        .ok_or_else(ApiError::action_not_found)
}
