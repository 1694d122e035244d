//! The per-record log of an action, one line per submitted record, paged by cursor.

use axum::extract::State;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::{ActionId, OutcomeCode, OutcomeStatus};
use futures::TryStreamExt;
use infra::mongo::{ACTION_VIEWS, LOG_VIEWS};
use infra::views::{LogLine, StoredLogBucket};
use mongodb::bson::{doc, Document};
use mongodb::options::FindOptions;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::OwnedAction;
use crate::query::{invalid, QueryPairs, QueryParams};
use crate::AppState;

pub const LOGS_LIMIT_DEFAULT: u64 = 100;
pub const LOGS_LIMIT_MAX: u64 = 1000;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Position of the record in the submitted `data`.
    index: u32,
    /// The record's key, normalised (its email, domain, id or external id, as the action
    /// matches by), or as sent when it could not be read as one. Named `email` since
    /// contacts were the only entity type.
    email: Option<String>,
    status: OutcomeStatus,
    code: OutcomeCode,
    message: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogPage {
    items: Vec<LogEntry>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Per-record outcomes of a bulk action, by record index.
///
/// Projected asynchronously: records appear as their batches are applied.
#[utoipa::path(get, path = "/bulk-actions/{actionId}/logs", tag = "bulk-actions",
    params(
        ("actionId" = String, Path, description = "ULID of the action"),
        ("status" = Option<OutcomeStatus>, Query),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "From the previous page's nextCursor"),
    ),
    responses((status = 200, body = LogPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_logs(
    State(state): State<AppState>,
    OwnedAction(action): OwnedAction,
    QueryPairs(pairs): QueryPairs,
) -> Result<Json<LogPage>, ApiError> {
    let params = QueryParams::parse(pairs, &["status", "limit", "cursor"])?;
    let status = params.parsed("status", OutcomeStatus::parse)?;
    let limit = params.capped("limit", LOGS_LIMIT_DEFAULT, 1, LOGS_LIMIT_MAX)?;
    let after = match params.text("cursor") {
        None => None,
        Some(cursor) => Some(
            decode_cursor(cursor)
                .ok_or_else(|| invalid("cursor", "is not a cursor this api issued"))?,
        ),
    };

    let known = state.store.meta(action).await?.is_some()
        || state
            .database
            .collection::<Document>(ACTION_VIEWS)
            .find_one(doc! { "_id": action.to_string() })
            .await?
            .is_some();
    if !known {
        return Err(ApiError::action_not_found());
    }

    let mut lines = page_of_lines(&state, action, status, after, limit as usize).await?;
    let next_cursor = if lines.len() as u64 > limit {
        lines.truncate(limit as usize);
        lines.last().map(|line| encode_cursor(line.index))
    } else {
        None
    };
    Ok(Json(LogPage {
        items: lines
            .into_iter()
            .map(|line| LogEntry {
                index: line.index,
                email: line.email,
                status: line.status,
                code: line.code,
                message: line.message,
            })
            .collect(),
        next_cursor,
    }))
}

/// Buckets read per round trip while filling a page.
const BUCKETS_PER_READ: i64 = 4;

/// Up to `limit + 1` lines with an index above `after` (and the status, if given), by
/// index.
///
/// Lines live in buckets (`StoredLogBucket`) whose index ranges overlap: a batch's records
/// interleave with those rejected at submission. Buckets are read by their smallest index;
/// once `limit + 1` lines are in hand and the next bucket starts above the last of them, no
/// later bucket can hold a smaller index, and the page is complete.
async fn page_of_lines(
    state: &AppState,
    action: ActionId,
    status: Option<OutcomeStatus>,
    after: Option<u32>,
    limit: usize,
) -> Result<Vec<LogLine>, ApiError> {
    let buckets = state.database.collection::<StoredLogBucket>(LOG_VIEWS);
    let wanted = limit + 1;
    let mut lines: Vec<LogLine> = Vec::with_capacity(wanted);
    let mut read_past: Option<u32> = None;
    loop {
        let mut filter = doc! { "actionId": action.to_string() };
        if let Some(status) = status {
            filter.insert("statuses", status.as_str());
        }
        if let Some(after) = after {
            filter.insert("maxIndex", doc! { "$gt": i64::from(after) });
        }
        if let Some(read_past) = read_past {
            filter.insert("minIndex", doc! { "$gt": i64::from(read_past) });
        }
        let options = FindOptions::builder()
            .sort(doc! { "minIndex": 1 })
            .limit(BUCKETS_PER_READ)
            // All of them in the first reply: one round trip, and no `getMore` to lose.
            .batch_size(BUCKETS_PER_READ as u32)
            .build();
        let read: Vec<StoredLogBucket> = buckets
            .find(filter)
            .with_options(options)
            .await?
            .try_collect()
            .await?;
        let exhausted = (read.len() as i64) < BUCKETS_PER_READ;
        for bucket in read {
            let page_is_full = lines.len() >= wanted
                && lines
                    .last()
                    .is_some_and(|last| bucket.min_index > last.index);
            if page_is_full {
                return Ok(lines);
            }
            read_past = Some(bucket.min_index);
            let bucket_lines = bucket.lines().map_err(|error| {
                ApiError::internal(format!("log bucket {} is unreadable: {error}", bucket.id))
            })?;
            lines.extend(bucket_lines.into_iter().filter(|line| {
                after.is_none_or(|after| line.index > after)
                    && status.is_none_or(|status| line.status == status)
            }));
            lines.sort_unstable_by_key(|line| line.index);
            lines.truncate(wanted);
        }
        if exhausted {
            return Ok(lines);
        }
    }
}

/// Opaque to clients; versioned so the format can change without breaking old cursors.
fn encode_cursor(index: u32) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{index}"))
}

fn decode_cursor(cursor: &str) -> Option<u32> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    text.strip_prefix("v1:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        assert_eq!(decode_cursor(&encode_cursor(41)), Some(41));
        assert_eq!(decode_cursor("41"), None);
        assert_eq!(
            decode_cursor(&URL_SAFE_NO_PAD.encode("v1:{\"$gt\":1}")),
            None
        );
    }
}
