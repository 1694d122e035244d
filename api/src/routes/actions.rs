//! Submitting and reading bulk actions.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use domain::view::fold;
use domain::{
    plan_action, ActionId, ActionStats, ActionStatus, ActionView, EntityType, EventEnvelope,
    EventPayload, RecordOutcome, ScheduleError, SCHEMA_VERSION,
};
use futures::TryStreamExt;
use infra::event_store::{Commit, NewAction};
use infra::mongo::ACTION_VIEWS;
use infra::views::StoredActionView;
use mongodb::bson::doc;
use mongodb::options::FindOptions;
use serde::Serialize;
use serde_json::json;
use ulid::Ulid;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::idempotency::{self, Claim, IdempotencyKey};
use crate::query::QueryParams;
use crate::routes::control::owned_action;
use crate::submission::{self, SubmitRequest};
use crate::{read_model, AppState};

pub const LIST_LIMIT_DEFAULT: u64 = 20;
pub const LIST_LIMIT_MAX: u64 = 100;
pub const LIST_SKIP_MAX: u64 = 100_000;

/// Submit a bulk action.
///
/// Validates the request as a whole (any problem: 4xx, nothing written), then validates and
/// deduplicates records one by one (problems become per-record outcomes in the logs), and
/// queues the action. The response is the action view as of acceptance.
#[utoipa::path(post, path = "/bulk-actions", tag = "bulk-actions",
    request_body(content = SubmitRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1-255 visible ASCII characters; resubmitting with the same key and body returns the original action (remembered 24 h)")),
    responses(
        (status = 202, description = "Accepted; `Location` names the action. A resubmission with a known `Idempotency-Key` gets the original action and `Idempotent-Replayed: true`", body = ActionView,
            headers(("Location" = String, description = "/bulk-actions/{actionId}"),
                    ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "The request is invalid; nothing was written", body = ErrorBody),
        (status = 403, description = "`accountId` names another account than the API key's (`account_mismatch`)", body = ErrorBody),
        (status = 422, description = "The `Idempotency-Key` was used with a different body", body = ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "The account's request budget is spent; see `Retry-After`", body = ErrorBody),
        (status = 503, description = "Redis or MongoDB unavailable; retry", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let body = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(_)
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body is larger than {} bytes",
                    state.config.max_body_bytes
                ),
            )
            .with_details(json!({ "limit": state.config.max_body_bytes }))
        }
        other => ApiError::bad_request("unreadable_body", other.body_text()),
    })?;

    let idempotency_key = IdempotencyKey::from_headers(&headers)?;
    let max_records = state.config.max_records_per_action;
    let configured_batch_size = state.config.batch_size;
    let wants_fingerprint = idempotency_key.is_some();
    let caller_account = caller.account.clone();
    // Parsing and planning a large body is CPU work; keep it off the async workers.
    let (submission, plan, body_fingerprint) = tokio::task::spawn_blocking(move || {
        submission::parse(&body, max_records, &caller_account).map(|submission| {
            let batch_size = batch_size_of(configured_batch_size, submission.pacing);
            let plan = plan_action(&submission.data, submission.action_type, batch_size);
            let body_fingerprint = wants_fingerprint.then(|| idempotency::fingerprint(&body));
            (submission, plan, body_fingerprint)
        })
    })
    .await
    .map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            error.to_string(),
        )
    })??;

    let created_at = infra::clock::now();
    let start_at = match domain::schedule::start_time(
        submission.scheduled_for,
        created_at,
        state.config.schedule_horizon_days,
    ) {
        Ok(start_at) => start_at,
        Err(error) => {
            // A resubmission of an action that exists gets it, even once its time has passed.
            if let (Some(key), Some(body_fingerprint)) = (&idempotency_key, &body_fingerprint) {
                let existing =
                    idempotency::committed(&state, &submission.account_id, key, body_fingerprint)
                        .await?;
                if let Some(id) = existing {
                    return replay(&state, id).await;
                }
            }
            return Err(schedule_refused(error));
        }
    };
    let batch_size = batch_size_of(configured_batch_size, submission.pacing);
    let candidate = state.next_action_id(&submission.account_id);
    let action_id = match (&idempotency_key, &body_fingerprint) {
        (Some(key), Some(body_fingerprint)) => {
            let claim = idempotency::claim(
                &state,
                &submission.account_id,
                key,
                body_fingerprint,
                candidate,
            )
            .await?;
            match claim {
                Claim::Proceed(id) => id,
                Claim::Replay(id) => return replay(&state, id).await,
            }
        }
        _ => candidate,
    };
    let batch_count = u32::try_from(plan.batches.len()).unwrap_or(u32::MAX);
    let total_records = plan.total_records;
    let mut events = vec![EventPayload::Created {
        account_id: submission.account_id.clone(),
        entity_type: submission.entity_type,
        action_type: submission.action_type,
        total_records,
        batch_count,
        scheduled_for: submission.scheduled_for,
        pacing: submission.pacing,
        max_records_per_minute: submission.max_records_per_minute,
        api_key_id: Some(caller.key_id.clone()),
    }];
    events.extend(chunked(plan.rejected, batch_size, |records| {
        EventPayload::RecordRejected { records }
    }));
    events.extend(chunked(plan.duplicates, batch_size, |records| {
        EventPayload::RecordSkipped { records }
    }));
    if batch_count == 0 {
        events.push(EventPayload::Completed {});
    }

    // A token of this submission's own: a racing retry of the same action stages apart.
    let staging_token = Ulid::new().to_string();
    state
        .store
        .stage_batches(action_id, &staging_token, &plan.batches)
        .await?;
    let new_action = NewAction {
        action_id,
        account_id: &submission.account_id,
        action_type: submission.action_type,
        entity_type: submission.entity_type,
        batch_count,
        batch_size: batch_size as u32,
        records_in_batches: plan.batches.iter().map(|b| b.records.len() as u32).sum(),
        pace: domain::pacing::action_bucket(
            submission.pacing,
            submission.max_records_per_minute,
            batch_size as u32,
        ),
        start_at,
        created_at,
        events,
        staging_token: &staging_token,
    };
    if state.store.commit_action(&new_action).await? == Commit::AlreadyExisted {
        return replay(&state, action_id).await;
    }
    tracing::info!(%action_id, account = %submission.account_id, records = total_records, batches = batch_count, "bulk action accepted");

    let view = opening_view(&new_action)?;
    Ok(accepted(view))
}

/// A drip never releases more than its own batch at once, so its batches are no larger.
fn batch_size_of(configured: usize, pacing: Option<domain::Pacing>) -> usize {
    domain::pacing::planned_batch_size(u32::try_from(configured).unwrap_or(u32::MAX), pacing)
        as usize
}

fn accepted(view: ActionView) -> Response {
    let location = format!("/bulk-actions/{}", view.action_id);
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The answer to a resubmission with a known `Idempotency-Key`: the original action as it
/// stands now, flagged as a replay.
async fn replay(state: &AppState, action: ActionId) -> Result<Response, ApiError> {
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
            ApiError::bad_request("scheduled_for_in_past", message).with_details(json!({
                "field": "scheduledFor",
                "lateByMs": late_by_ms,
                "toleranceMs": domain::schedule::CLOCK_SKEW_TOLERANCE_MS,
            }))
        }
        ScheduleError::BeyondHorizon { horizon_days } => {
            ApiError::bad_request("scheduled_for_too_far", message).with_details(json!({
                "field": "scheduledFor",
                "horizonDays": horizon_days,
            }))
        }
    }
}

pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        )
        .with_details(json!({ "received": content_type })))
    }
}

fn chunked(
    outcomes: Vec<RecordOutcome>,
    chunk: usize,
    event: impl Fn(Vec<RecordOutcome>) -> EventPayload,
) -> impl Iterator<Item = EventPayload> {
    // Moves the outcomes into their events; no record is copied.
    let mut rest = outcomes.into_iter().peekable();
    std::iter::from_fn(move || {
        rest.peek()?;
        Some(event(rest.by_ref().take(chunk.max(1)).collect()))
    })
}

/// The view as it stands right after acceptance: the fold of the events just committed.
fn opening_view(new_action: &NewAction<'_>) -> Result<ActionView, ApiError> {
    let envelopes: Vec<EventEnvelope> = new_action
        .events
        .iter()
        .zip(1u64..)
        .map(|(payload, seq)| EventEnvelope {
            event_id: Ulid::new(),
            action_id: new_action.action_id,
            seq,
            schema_version: SCHEMA_VERSION,
            occurred_at: new_action.created_at,
            payload: payload.clone(),
        })
        .collect();
    fold(None, &envelopes).ok().flatten().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "opening events do not fold",
        )
    })
}

pub fn parse_action_id(raw: &str) -> Result<ActionId, ApiError> {
    ActionId::parse(raw).ok_or_else(|| {
        ApiError::bad_request("invalid_action_id", "action ids are 26-character ULIDs")
            .with_details(json!({ "actionId": raw.chars().take(64).collect::<String>() }))
    })
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
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Json<ActionView>, ApiError> {
    let action = owned_action(&state, &caller, &raw_id).await?;
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
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Json<ActionStats>, ApiError> {
    let action = owned_action(&state, &caller, &raw_id).await?;
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
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<ActionList>, ApiError> {
    let Query(pairs) =
        query.map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
    let params = QueryParams::parse(
        pairs,
        &["accountId", "status", "entityType", "limit", "skip"],
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

#[cfg(test)]
mod tests {
    use super::*;
    use domain::OutcomeCode;

    #[test]
    fn chunks_keep_every_outcome_once_in_order() {
        let outcomes: Vec<RecordOutcome> = (0..7)
            .map(|index| RecordOutcome {
                index,
                email: None,
                code: OutcomeCode::InvalidEmail,
                message: None,
            })
            .collect();
        let sizes: Vec<Vec<u32>> = chunked(outcomes, 3, |records| EventPayload::RecordRejected {
            records,
        })
        .map(|event| event.record_outcomes().iter().map(|o| o.index).collect())
        .collect();
        assert_eq!(sizes, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        assert_eq!(
            chunked(Vec::new(), 3, |records| EventPayload::RecordSkipped {
                records
            })
            .count(),
            0
        );
    }
}
