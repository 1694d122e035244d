//! Submitting and reading bulk actions.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use domain::{
    ActionId, ActionStats, ActionStatus, ActionType, ActionView, EntityType, ScheduleError,
};
use futures::TryStreamExt;
use infra::mongo::ACTION_VIEWS;
use infra::views::StoredActionView;
use mongodb::bson::doc;
use mongodb::options::FindOptions;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::OwnedAction;
use crate::query::{QueryPairs, QueryParams};
use crate::{read_model, AppState};

pub const LIST_LIMIT_DEFAULT: u64 = 20;
pub const LIST_LIMIT_MAX: u64 = 100;
pub const LIST_SKIP_MAX: u64 = 100_000;

/// A drip never releases more than its own batch at once, so its batches are no larger.
pub fn batch_size_of(configured: usize, pacing: Option<domain::Pacing>) -> usize {
    domain::pacing::planned_batch_size(u32::try_from(configured).unwrap_or(u32::MAX), pacing)
        as usize
}

pub fn accepted(view: ActionView) -> Response {
    let location = format!("/bulk-actions/{}", view.action_id);
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The answer to a resubmission with a known `Idempotency-Key`: the original action as it
/// stands now, flagged as a replay.
pub async fn replay(state: &AppState, action: ActionId) -> Result<Response, ApiError> {
    let view = read_model::action_view(state, action)
        .await?
        .ok_or_else(ApiError::action_not_found)?;
    tracing::info!(%action, "idempotent resubmission; answering with the original action");
    let mut response = accepted(view);
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}

pub fn schedule_refused(error: ScheduleError) -> ApiError {
    let message = error.to_string();
    match error {
        ScheduleError::InPast { late_by_ms } => {
            ApiError::bad_request(ErrorCode::ScheduledForInPast, message).with_details(json!({
                "field": "scheduledFor",
                "lateByMs": late_by_ms,
                "toleranceMs": domain::schedule::CLOCK_SKEW_TOLERANCE_MS,
            }))
        }
        ScheduleError::BeyondHorizon { horizon_days } => {
            ApiError::bad_request(ErrorCode::ScheduledForTooFar, message).with_details(json!({
                "field": "scheduledFor",
                "horizonDays": horizon_days,
            }))
        }
    }
}

/// Get a bulk action's view: status, counts and progress.
#[utoipa::path(get, path = "/bulk-actions/{actionId}", tag = "bulk-actions",
    params(("actionId" = String, Path, description = "ULID of the action")),
    responses(
        (status = 200, body = ActionView),
        (status = 400, description = "Not a ULID", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get_action(
    State(state): State<AppState>,
    OwnedAction(action): OwnedAction,
) -> Result<Json<ActionView>, ApiError> {
    read_model::action_view(&state, action)
        .await?
        .map(Json)
        .ok_or_else(ApiError::action_not_found)
}

/// Get a bulk action's statistics.
#[utoipa::path(get, path = "/bulk-actions/{actionId}/stats", tag = "bulk-actions",
    params(("actionId" = String, Path, description = "ULID of the action")),
    responses(
        (status = 200, body = ActionStats),
        (status = 400, description = "Not a ULID", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get_stats(
    State(state): State<AppState>,
    OwnedAction(action): OwnedAction,
) -> Result<Json<ActionStats>, ApiError> {
    let view = read_model::action_view(&state, action)
        .await?
        .ok_or_else(ApiError::action_not_found)?;
    Ok(Json(view.stats(infra::clock::now())))
}

#[derive(Serialize, ToSchema)]
pub struct ActionList {
    items: Vec<ActionView>,
    /// Matching actions in all pages.
    total: u64,
    limit: u64,
    skip: u64,
}

/// List bulk actions, newest first.
///
/// Served from the projected views: an action accepted a moment ago may take a moment to
/// appear here (fetch it by id to read your own write at once). `limit` defaults to 20 and
/// is capped at 100; `skip` at 100000 (use filters for deeper pages).
#[utoipa::path(get, path = "/bulk-actions", tag = "bulk-actions",
    params(
        ("accountId" = Option<String>, Query),
        ("status" = Option<ActionStatus>, Query),
        ("entityType" = Option<EntityType>, Query),
        ("actionType" = Option<ActionType>, Query),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 100),
        ("skip" = Option<u64>, Query, minimum = 0, maximum = 100000),
    ),
    responses(
        (status = 200, body = ActionList),
        (status = 400, body = ErrorBody),
        (status = 403, description = "`accountId` names another account than the API key's (`account_mismatch`)", body = ErrorBody),
    ))]
pub async fn list_actions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryPairs(pairs): QueryPairs,
) -> Result<Json<ActionList>, ApiError> {
    let params = QueryParams::parse(
        pairs,
        &[
            "accountId",
            "status",
            "entityType",
            "actionType",
            "limit",
            "skip",
        ],
    )?;
    if let Some(account) = params.parsed("accountId", |raw| domain::AccountId::parse(raw).ok())? {
        if account != caller.account {
            return Err(ApiError::account_mismatch(&account));
        }
    }
    let mut filter = doc! { "accountId": caller.account.as_str() };
    if let Some(status) = params.parsed("status", ActionStatus::parse)? {
        filter.insert("status", status.as_str());
    }
    if let Some(entity) = params.parsed("entityType", EntityType::parse)? {
        filter.insert("entityType", entity.as_str());
    }
    if let Some(action_type) = params.parsed("actionType", ActionType::parse)? {
        filter.insert("actionType", action_type.as_str());
    }
    let limit = params.capped("limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)?;
    let skip = params.capped("skip", 0, 0, LIST_SKIP_MAX)?;

    let views = state.database.collection::<StoredActionView>(ACTION_VIEWS);
    let options = FindOptions::builder()
        .sort(doc! { "createdAt": -1, "_id": -1 })
        .limit(limit as i64)
        // The whole page in the first reply: one round trip, and no `getMore` to lose.
        .batch_size(limit as u32)
        .skip(skip)
        .build();
    let (items, total) = tokio::try_join!(
        async {
            views
                .find(filter.clone())
                .with_options(options)
                .await?
                .try_collect::<Vec<_>>()
                .await
        },
        async { views.count_documents(filter.clone()).await },
    )?;
    Ok(Json(ActionList {
        items: items.into_iter().map(|stored| stored.view).collect(),
        total,
        limit,
        skip,
    }))
}
