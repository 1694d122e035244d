//! `POST /bulk-actions/{id}/retry`: a new action of some of a finished action's records,
//! read from its result rows and planned like an upload.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use domain::{ActionId, OutcomeCode, OutcomeStatus, Pacing, Planner};
use infra::retries::RetryRecorded;
use infra::staging::Staging;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::{JsonObject, OwnedAction};
use crate::idempotency::IdempotencyKey;
use crate::ingest::{self, Record, RecordSink};
use crate::results::rows::{ReadError, RowReader};
use crate::routes::actions::{accepted, batch_size_of, replay};
use crate::routes::submit::commit::{self, Committed};
use crate::submission::ActionSettings;
use crate::{read_model, AppState};

/// Records in flight from the rows being read to the planner.
const ROWS_IN_FLIGHT: usize = 1_024;

/// Which records to retry, and the pace to retry them at.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryRequest {
    /// The statuses whose records are retried: `failed`, `skipped`, `unprocessed`
    /// (default `["failed", "unprocessed"]`).
    #[schema(example = json!(["failed", "unprocessed"]))]
    statuses: Option<Vec<OutcomeStatus>>,
    /// Only the records with one of these codes (default: any).
    codes: Option<Vec<OutcomeCode>>,
    /// The retry's drip pace (absent: the original's; `null`: none).
    #[schema(value_type = Option<Pacing>)]
    #[serde(
        default,
        deserialize_with = "crate::extract::present",
        skip_serializing_if = "Option::is_none"
    )]
    pacing: Option<Value>,
    /// The retry's ceiling on records per minute (absent: the original's; `null`: none).
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 10000000)]
    #[serde(
        default,
        deserialize_with = "crate::extract::present",
        skip_serializing_if = "Option::is_none"
    )]
    max_records_per_minute: Option<Value>,
}

/// Retry some records of a finished action as a new action.
///
/// Reads the action's result rows of `statuses` (and `codes`), by status then index, and
/// submits their records, as kept, through the same planner as an upload: same entity
/// type, action type and `matchBy`, checked against the account's fields as they are now.
/// A row whose fields were not kept (an action from before result files, or a record too
/// large to keep whole) fails in the retry with `fields_not_kept`. The new action has
/// `retryOf`; the original lists it in `retries`.
#[utoipa::path(post, path = "/bulk-actions/{actionId}/retry", tag = "bulk-actions",
    params(
        ("actionId" = String, Path, description = "ULID of the action"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "As for POST /bulk-actions: the same key and body answer with the same retry"),
    ),
    request_body = RetryRequest,
    responses(
        (status = 202, description = "The retry was accepted", body = domain::ActionView,
            headers(("Location" = String, description = "/bulk-actions/{retryId}"))),
        (status = 400, description = "The body is invalid", body = ErrorBody),
        (status = 404, description = "No such action in this account", body = ErrorBody),
        (status = 409, description = "The action has not finished (`action_not_finished`), its events are archived (`action_archived`), it was retried `RETRIES_MAX` (100) times (`too_many_retries`), or its last records are not projected yet (`results_not_ready`)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "No row matches, or none kept its fields (`nothing_to_retry`); or the `Idempotency-Key` was used with another body", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OwnedAction(original): OwnedAction,
    headers: HeaderMap,
    JsonObject(request): JsonObject<RetryRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = IdempotencyKey::from_headers(&headers)?;
    let statuses = statuses_of(&request)?;
    let (pacing, max_records_per_minute) = crate::submission::pace(
        request.pacing.as_ref(),
        request.max_records_per_minute.as_ref(),
    )?;
    // A repeated request answers at once, without reading and planning every row again.
    if let Some(key) = &idempotency_key {
        let fingerprint = fingerprint(original, &request);
        if let Some(retry) =
            crate::idempotency::committed(&state, &caller.account, key, &fingerprint).await?
        {
            note_retry(&state, original, retry, &caller).await;
            return replay(&state, retry).await;
        }
    }
    let view = read_model::action_view(&state, original)
        .await?
        .ok_or_else(ApiError::action_not_found)?;
    if !view.status.is_terminal() {
        return Err(ApiError::conflict(
            ErrorCode::ActionNotFinished,
            "the action has not finished: its results are not final yet",
        )
        .with_details(json!({ "status": view.status })));
    }
    crate::routes::results::require_projected(&state, original).await?;
    if view.retries.len() >= domain::view::RETRIES_MAX {
        return Err(ApiError::conflict(
            ErrorCode::TooManyRetries,
            "the action has been retried as often as it may be: retry one of its retries",
        )
        .with_details(json!({ "limit": domain::view::RETRIES_MAX })));
    }
    if state
        .store
        .meta(original)
        .await?
        .is_some_and(|meta| meta.archived)
    {
        return Err(ApiError::conflict(
            ErrorCode::ActionArchived,
            "the action's events are archived: download its results (GET /bulk-actions/{id}/results) and submit them",
        ));
    }
    let settings = ActionSettings {
        account_id: caller.account.clone(),
        entity_type: view.entity_type,
        action_type: view.action_type,
        scheduled_for: None,
        // Absent: the original's; given (`null` included): as given.
        pacing: if request.pacing.is_some() {
            pacing
        } else {
            view.pacing
        },
        max_records_per_minute: if request.max_records_per_minute.is_some() {
            max_records_per_minute
        } else {
            view.max_records_per_minute
        },
        match_by: (view.match_by != "natural").then(|| view.match_by.clone()),
        retry_of: Some(original),
    };
    let config = state.config.clone();
    let crate::submission::RulesInForce {
        custom_fields,
        match_by,
        rules,
    } = crate::submission::rules_in_force(&state.store, &settings).await?;
    let batch_size = batch_size_of(config.batch_size, settings.pacing);

    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Record>(ROWS_IN_FLIGHT);
    let reading = tokio::spawn(read_rows(
        state.database.clone(),
        original,
        statuses,
        // A set: a body may repeat a code a million times.
        request
            .codes
            .as_ref()
            .map(|codes| codes.iter().copied().collect()),
        sender,
    ));
    let mut staging = Staging::new(&state.store, &settings.account_id);
    let planned = ingest::plan_and_stage(
        move |sink: &mut RecordSink<'_>| {
            while let Some(record) = receiver.blocking_recv() {
                sink(record)?;
            }
            Ok(())
        },
        Planner::new(rules, batch_size)
            .limit_kept(commit::kept_room(&state, &settings.account_id).await?),
        ingest::PlanLimits {
            max_records: config.max_records_per_action,
            max_batches: config.max_batches_per_action,
            batch_size,
        },
        &mut staging,
    )
    .await;
    let outcome = match (planned, reading.await) {
        (Ok(summary), Ok(Ok(counts))) => {
            if let Some(refusal) = counts.refusal() {
                Err(refusal)
            } else {
                let plan = commit::Plan {
                    summary,
                    batch_size,
                    early_schedule: Ok(None),
                    custom_fields,
                    match_by,
                };
                let fingerprint = fingerprint(original, &request);
                commit::commit(
                    &state,
                    &caller,
                    &settings,
                    plan,
                    idempotency_key
                        .as_ref()
                        .map(|key| (key, fingerprint.as_str())),
                    &staging,
                )
                .await
            }
        }
        (_, Ok(Err(error))) => Err(read_refused(error)),
        (_, Err(error)) => Err(ApiError::internal(error)),
        (Err(error), _) => Err(error),
    };
    if !matches!(outcome, Ok(Committed::Created(_))) {
        if let Err(error) = staging.discard().await {
            tracing::warn!(%error, "could not drop a refused retry's staged records; they expire");
        }
    }
    let committed = outcome?;
    let retry = match &committed {
        Committed::Created(view) => view.action_id,
        Committed::Replayed(id) => *id,
    };
    note_retry(&state, original, retry, &caller).await;
    match committed {
        Committed::Created(view) => Ok(accepted(*view)),
        Committed::Replayed(id) => replay(&state, id).await,
    }
}

/// Records `retry` on `original` (`RetryCreated`, once per retry). After the commit: the
/// retry exists whatever happens here, so a failure is logged, not answered, and a crash or
/// an outage in between leaves the mention out until the same `Idempotency-Key` is sent
/// again.
async fn note_retry(state: &AppState, original: ActionId, retry: ActionId, caller: &Caller) {
    let recorded = state
        .store
        .record_retry(
            original,
            retry,
            Some(caller.key_id.clone()),
            infra::clock::now(),
        )
        .await;
    match recorded {
        Ok(RetryRecorded::Recorded) => {}
        Ok(other) => {
            tracing::warn!(%original, %retry, ?other, "the retry could not be recorded on its original");
        }
        Err(error) => {
            tracing::error!(%original, %retry, %error, "the retry was created but not recorded on its original");
        }
    }
}

fn statuses_of(request: &RetryRequest) -> Result<Vec<OutcomeStatus>, ApiError> {
    let asked = request
        .statuses
        .clone()
        .unwrap_or_else(|| vec![OutcomeStatus::Failed, OutcomeStatus::Unprocessed]);
    let invalid = |message: &str| {
        ApiError::bad_request(ErrorCode::InvalidField, message.to_owned())
            .with_details(json!({ "field": "statuses" }))
    };
    if asked.is_empty() {
        return Err(invalid("statuses must name at least one status"));
    }
    if asked.contains(&OutcomeStatus::Succeeded) {
        return Err(invalid(
            "succeeded records are not retried: their fields are not kept",
        ));
    }
    let mut statuses = Vec::new();
    for status in asked {
        if !statuses.contains(&status) {
            statuses.push(status);
        }
    }
    Ok(statuses)
}

/// What the rows read for a retry held.
#[derive(Debug, Default)]
struct RowCounts {
    matched: u64,
    without_fields: u64,
}

impl RowCounts {
    fn refusal(&self) -> Option<ApiError> {
        let refuse = |message: &str| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::NothingToRetry,
                message.to_owned(),
            )
            .with_details(json!({
                "matched": self.matched,
                "withoutFields": self.without_fields,
            }))
        };
        if self.matched == 0 {
            Some(refuse("no result row matches these statuses and codes"))
        } else if self.matched == self.without_fields {
            Some(refuse(
                "no matching row kept its fields (the action predates result files, or its records were too large)",
            ))
        } else {
            None
        }
    }
}

/// Reads the rows of each status in turn and hands each matching one to the planner.
async fn read_rows(
    database: mongodb::Database,
    action: ActionId,
    statuses: Vec<OutcomeStatus>,
    codes: Option<std::collections::BTreeSet<OutcomeCode>>,
    sender: tokio::sync::mpsc::Sender<Record>,
) -> Result<RowCounts, ReadError> {
    let mut counts = RowCounts::default();
    for status in statuses {
        let mut reader = RowReader::open(&database, action, status).await?;
        loop {
            let rows = reader.next().await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                if codes
                    .as_ref()
                    .is_some_and(|codes| !codes.contains(&row.code))
                {
                    continue;
                }
                counts.matched += 1;
                let record = match row.record {
                    Some(record) if !record.truncated => {
                        Record::Value(Value::Object(record.fields))
                    }
                    _ => {
                        counts.without_fields += 1;
                        Record::Refused {
                            key: row.key,
                            code: OutcomeCode::FieldsNotKept,
                            message: format!(
                                "record {} of action {action} did not keep its fields; submit it again in full",
                                row.index
                            ),
                        }
                    }
                };
                if sender.send(record).await.is_err() {
                    // The planner stopped (a limit, or staging failed): its error is the one.
                    return Ok(counts);
                }
            }
        }
    }
    Ok(counts)
}

fn read_refused(error: ReadError) -> ApiError {
    match error {
        ReadError::Mongo(error) => ApiError::from(error),
        ReadError::Corrupt(why) => ApiError::internal(why),
    }
}

/// What tells this retry apart from another under the same `Idempotency-Key`: the action
/// and the request, as read.
fn fingerprint(original: ActionId, request: &RetryRequest) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"retry\0");
    hasher.update(original.to_string().as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(request).unwrap_or_default());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_pace_is_told_from_an_absent_one() {
        let null: RetryRequest = serde_json::from_value(json!({"pacing": null})).unwrap();
        assert_eq!(null.pacing, Some(Value::Null));
        let absent: RetryRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!(absent.pacing, None);
        let action = ActionId::from_ulid(ulid::Ulid::new());
        assert_ne!(fingerprint(action, &null), fingerprint(action, &absent));
    }

    #[test]
    fn statuses_default_to_failed_and_unprocessed_and_never_succeeded() {
        let defaults = statuses_of(&RetryRequest::default()).unwrap();
        assert_eq!(
            defaults,
            [OutcomeStatus::Failed, OutcomeStatus::Unprocessed]
        );
        let succeeded = RetryRequest {
            statuses: Some(vec![OutcomeStatus::Succeeded]),
            ..RetryRequest::default()
        };
        assert!(statuses_of(&succeeded).is_err());
        let twice = RetryRequest {
            statuses: Some(vec![OutcomeStatus::Skipped, OutcomeStatus::Skipped]),
            ..RetryRequest::default()
        };
        assert_eq!(statuses_of(&twice).unwrap(), [OutcomeStatus::Skipped]);
    }
}
