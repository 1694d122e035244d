//! Changing an action after submission: cancel, pause, resume, and PATCH of its start time
//! and pace. Each is one atomic script in Redis plus an event in the action's stream; the
//! answer is the action as it stands right after (read your own writes).

use axum::extract::State;
use axum::{Extension, Json};
use domain::lifecycle::{Amendment, Command, PaceChange, Refusal};
use domain::{ActionId, ActionView};
use infra::lifecycle::Executed;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::actions::schedule_refused;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::{present, JsonObject, OwnedAction};
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
    OwnedAction(action): OwnedAction,
) -> Result<Json<ActionView>, ApiError> {
    command(&state, &caller, action, Command::Cancel).await
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
    OwnedAction(action): OwnedAction,
) -> Result<Json<ActionView>, ApiError> {
    command(&state, &caller, action, Command::Pause).await
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
    OwnedAction(action): OwnedAction,
) -> Result<Json<ActionView>, ApiError> {
    command(&state, &caller, action, Command::Resume).await
}

async fn command(
    state: &AppState,
    caller: &Caller,
    action: ActionId,
    command: Command,
) -> Result<Json<ActionView>, ApiError> {
    let executed = state
        .store
        .execute(
            action,
            &command,
            state.config.batch_size as u32,
            Some(&caller.key_id),
            infra::clock::now(),
        )
        .await?;
    if executed == Executed::Recorded {
        tracing::info!(?command, "action controlled");
    }
    refused(executed)?;
    current_view(state, action).await
}

/// The body of `PATCH /bulk-actions/{actionId}`; absent fields stay as they are, `null`
/// removes a pace. Each field is read by the rules of a submission's, with their codes.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AmendRequest {
    /// A new start; only while the action is `scheduled`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2030-03-20T10:00:00Z")]
    scheduled_for: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<domain::Pacing>)]
    pacing: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 10000000)]
    max_records_per_minute: Option<Value>,
}

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
        (status = 413, description = "A body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn amend(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OwnedAction(action): OwnedAction,
    JsonObject(request): JsonObject<AmendRequest>,
) -> Result<Json<ActionView>, ApiError> {
    if request.scheduled_for.is_none()
        && request.pacing.is_none()
        && request.max_records_per_minute.is_none()
    {
        return Err(ApiError::bad_request(
            ErrorCode::EmptyPatch,
            "nothing to change: give scheduledFor, pacing or maxRecordsPerMinute",
        ));
    }
    let mut amendment = Amendment::default();
    if let Some(raw) = &request.scheduled_for {
        amendment.start_at = Some(new_start(&state, raw)?);
    }
    if request.pacing.is_some() || request.max_records_per_minute.is_some() {
        amendment.pace = Some(pace_change(&request)?);
    }
    let executed = state
        .store
        .execute(
            action,
            &Command::Amend(amendment),
            state.config.batch_size as u32,
            Some(&caller.key_id),
            infra::clock::now(),
        )
        .await?;
    refused(executed)?;
    tracing::info!("action amended");
    current_view(&state, action).await
}

/// `None` is "start now": the action moves to the front of the schedule, and the script
/// refuses it like any other move if it has already left the schedule.
fn new_start(state: &AppState, raw: &Value) -> Result<domain::Timestamp, ApiError> {
    let requested = submission::scheduled_for(Some(raw))?.ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidScheduledFor,
            "scheduledFor cannot be null",
        )
        .with_details(json!({ "field": "scheduledFor" }))
    })?;
    let now = infra::clock::now();
    let start =
        domain::schedule::start_time(Some(requested), now, state.config.schedule_horizon_days)
            .map_err(schedule_refused)?;
    Ok(start.unwrap_or(now))
}

/// What the request changes of the pace; `decide` keeps the rest as it is.
fn pace_change(request: &AmendRequest) -> Result<PaceChange, ApiError> {
    let (pacing, max) = submission::pace(
        request.pacing.as_ref(),
        request.max_records_per_minute.as_ref(),
    )?;
    Ok(PaceChange {
        pacing: request.pacing.is_some().then_some(pacing),
        max_records_per_minute: request.max_records_per_minute.is_some().then_some(max),
    })
}

fn refused(executed: Executed) -> Result<(), ApiError> {
    match executed {
        Executed::Recorded | Executed::AlreadySo => Ok(()),
        Executed::UnknownAction => Err(ApiError::action_not_found()),
        Executed::Refused(refusal) => {
            let code = match refusal {
                Refusal::Finished => ErrorCode::ActionFinished,
                Refusal::BeingCancelled => ErrorCode::ActionCancelling,
                Refusal::AlreadyReleased => ErrorCode::ActionAlreadyReleased,
            };
            Err(ApiError::conflict(code, refusal.to_string()))
        }
    }
}

async fn current_view(state: &AppState, action: ActionId) -> Result<Json<ActionView>, ApiError> {
    read_model::action_view(state, action)
        .await?
        .map(Json)
        .ok_or_else(ApiError::action_not_found)
}
