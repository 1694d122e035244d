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
    let slot = state
        .exports
        .take(&caller.account)
        .ok_or_else(|| too_many_exports(&state))?;
    let body = crate::results::file_body(&state.database, action, status, format, slot)
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

fn too_many_exports(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyExports,
        "the account is downloading as many result files as it may; finish one first",
    )
    .with_details(serde_json::json!({ "limit": state.exports.limit() }))
    .with_retry_after(1)
}
