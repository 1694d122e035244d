//! `GET /bulk-actions/{id}/results`: one status' rows as a CSV or NDJSON file, by index.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use domain::OutcomeStatus;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::OwnedAction;
use crate::query::{QueryPairs, QueryParams};
use crate::read_model::Projected;
use crate::results::rows::ReadError;
use crate::results::write::Format;
use crate::AppState;

/// A result file: one row per record of a status, by record index.
///
/// Columns: `_index`, `_key` (the key the action matches by, normalised), `_status`,
/// `_code`, `_message`, `_fields` (`kept`: the record's fields follow, whole; `truncated`:
/// only part of a record too large to keep; `none`: a succeeded record, or one of an action
/// from before result files), then the record's fields as it was submitted. A CSV has a
/// header row, its field columns the names that occur in its rows, every cell that could
/// start a formula behind a `'` (an upload takes it off); an NDJSON line is the record with
/// the `_` keys added. Uploads ignore the `_` columns, so a failed file, fixed, is submitted
/// again as it is. Rows appear as their batches are projected; the body streams.
#[utoipa::path(get, path = "/bulk-actions/{actionId}/results", tag = "bulk-actions",
    params(
        ("actionId" = String, Path, description = "ULID of the action"),
        ("status" = Option<OutcomeStatus>, Query, description = "The rows of this status (default `failed`)"),
        ("format" = Option<String>, Query, description = "`csv` or `ndjson`; wins over `Accept` (default: `Accept`, else CSV)"),
    ),
    responses(
        (status = 200, description = "The file, streamed",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "Unknown status, format or parameter (`invalid_query`)", body = ErrorBody),
        (status = 404, description = "No such action in this account", body = ErrorBody),
        (status = 409, description = "The action has finished but its last records are not projected yet, or its projection is quarantined (`results_not_ready`)", body = ErrorBody),
        (status = 429, description = "The account is downloading as many result files as it may (`too_many_exports`), or its request budget is spent", body = ErrorBody),
    ))]
pub async fn get_results(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OwnedAction(action): OwnedAction,
    headers: HeaderMap,
    QueryPairs(pairs): QueryPairs,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(pairs, &["status", "format"])?;
    let status = params
        .parsed("status", OutcomeStatus::parse)?
        .unwrap_or(OutcomeStatus::Failed);
    let format = match params.parsed("format", Format::parse)? {
        Some(format) => format,
        None => Format::accepted(
            headers
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default(),
        ),
    };
    require_projected(&state, action).await?;
    let slot = state
        .exports
        .take(&caller.account)
        .ok_or_else(|| too_many_exports(&state))?;
    let columns = match format {
        Format::Csv => upload_columns(&state, action).await?,
        Format::Ndjson => Vec::new(),
    };
    let body = crate::results::file_body(&state.database, action, status, format, &columns, slot)
        .await
        .map_err(|error| match error {
            ReadError::Mongo(error) => ApiError::from(error),
            ReadError::Corrupt(why) => ApiError::internal(why),
        })?;
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    let disposition = format!(
        "attachment; filename=\"{action}-{}.{}\"",
        status.as_str(),
        format.extension()
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The columns an upload of the action's kind takes now: its entity's fields, the
/// account's own, and the key it matches by.
async fn upload_columns(
    state: &AppState,
    action: domain::ActionId,
) -> Result<Vec<String>, ApiError> {
    let view = crate::read_model::action_view(state, action)
        .await?
        .ok_or_else(ApiError::action_not_found)?;
    let settings = crate::submission::ActionSettings {
        account_id: view.account_id.clone(),
        entity_type: view.entity_type,
        action_type: view.action_type,
        scheduled_for: None,
        pacing: None,
        max_records_per_minute: None,
        match_by: (view.match_by != "natural").then(|| view.match_by.clone()),
        retry_of: None,
    };
    // An account that since dropped the field the action matched by: its columns by the
    // natural key.
    let rules = match crate::submission::rules_in_force(&state.store, &settings).await {
        Ok(rules) => rules.rules,
        Err(_) => {
            let custom = state
                .store
                .field_definitions(&view.account_id, view.entity_type)
                .await?;
            domain::RecordRules::new(
                view.entity_type,
                view.action_type,
                domain::MatchBy::Natural,
                &custom,
            )
        }
    };
    Ok(rules.columns())
}

/// Refuses to read the results of a finished action whose views miss some of its events:
/// the file (or the retry) would silently lack records. A running action's rows appear as
/// they are projected, so its file is served as far as it goes.
pub async fn require_projected(state: &AppState, action: domain::ActionId) -> Result<(), ApiError> {
    match crate::read_model::projected(state, action).await? {
        Projected::Whole | Projected::Behind { finished: false } => Ok(()),
        Projected::Behind { finished: true } => Err(ApiError::conflict(
            ErrorCode::ResultsNotReady,
            "the action has finished and its last records are being projected; try again in a moment",
        )
        .with_retry_after(1)),
        Projected::Quarantined => Err(ApiError::conflict(
            ErrorCode::ResultsNotReady,
            "the action's projection stopped at an event the view store refused; its results are incomplete until an operator resumes it",
        )
        .with_details(serde_json::json!({ "quarantined": true }))),
    }
}

fn too_many_exports(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyExports,
        "the account is downloading as many result files as it may; finish one first",
    )
    .with_details(serde_json::json!({ "limit": state.exports.limit() }))
    .with_retry_after(1)
}
