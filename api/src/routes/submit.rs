//! `POST /bulk-actions`: a JSON body with settings and records, or a streamed upload of
//! records (NDJSON or CSV) with the settings as query parameters.
//!
//! Either way the records go through the same planner and are staged in Redis as they are
//! planned; the action exists only once `commit_action` has made it exist, with all of its
//! records, in one step.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use domain::{ActionView, Planner};
use infra::staging::Staging;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::idempotency::IdempotencyKey;
use crate::ingest::{self, RecordSink};
use crate::query::QueryPairs;
use crate::routes::actions::{accepted, batch_size_of, replay, schedule_refused};
use crate::AppState;
use commit::Committed;
use source::{Format, Received};

pub(crate) mod commit;
mod source;

/// Submit a bulk action.
///
/// Validates the request as a whole (any problem: 4xx, nothing written), then validates and
/// deduplicates records one by one (problems become per-record outcomes in the logs), and
/// queues the action. The response is the action view as of acceptance.
///
/// The records come as the `data` of a JSON body, or stream as NDJSON (one JSON record per
/// line) or CSV (a header row naming the fields, then one record per row), with the other
/// settings as query parameters. A line or row that cannot be read fails its own record
/// (`malformed_record`, `record_too_large`), not the upload.
#[utoipa::path(post, path = "/bulk-actions", tag = "bulk-actions",
    request_body(content(
        (crate::submission::SubmitRequest = "application/json"),
        (Vec<crate::submission::ContactRecord> = "application/x-ndjson"),
        (Vec<crate::submission::ContactRecord> = "text/csv"),
    )),
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "1-255 visible ASCII characters; resubmitting with the same key and body returns the original action (remembered 24 h)"),
        ("accountId" = Option<String>, Query, description = "NDJSON and CSV only: as `accountId` in a JSON body"),
        ("entityType" = Option<domain::EntityType>, Query, description = "NDJSON and CSV only (required there)"),
        ("actionType" = Option<domain::ActionType>, Query, description = "NDJSON and CSV only (required there)"),
        ("scheduledFor" = Option<String>, Query, description = "NDJSON and CSV only: RFC 3339"),
        ("pacingBatchSize" = Option<u32>, Query, description = "NDJSON and CSV only: `pacing.batchSize`"),
        ("pacingIntervalSeconds" = Option<u32>, Query, description = "NDJSON and CSV only: `pacing.intervalSeconds`"),
        ("maxRecordsPerMinute" = Option<u32>, Query, description = "NDJSON and CSV only"),
        ("matchBy" = Option<String>, Query, description = "NDJSON and CSV only: as `matchBy` in a JSON body (`natural`, `id`, `externalId:<field>`)"),
    ),
    responses(
        (status = 202, description = "Accepted; `Location` names the action. A resubmission with a known `Idempotency-Key` gets the original action and `Idempotent-Replayed: true`", body = ActionView,
            headers(("Location" = String, description = "/bulk-actions/{actionId}"),
                    ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "The request is invalid; nothing was written", body = crate::error::ErrorBody),
        (status = 403, description = "`accountId` names another account than the API key's (`account_mismatch`)", body = crate::error::ErrorBody),
        (status = 422, description = "The `Idempotency-Key` was used with a different body", body = crate::error::ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES (JSON) or MAX_UPLOAD_BYTES (NDJSON, CSV)", body = crate::error::ErrorBody),
        (status = 415, description = "Content-Type is not application/json, application/x-ndjson or text/csv", body = crate::error::ErrorBody),
        (status = 429, description = "The account's request budget is spent; see `Retry-After`", body = crate::error::ErrorBody),
        (status = 503, description = "Redis or MongoDB unavailable; retry", body = crate::error::ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    QueryPairs(pairs): QueryPairs,
    body: Body,
) -> Result<Response, ApiError> {
    let format = Format::of(&headers)?;
    let idempotency_key = IdempotencyKey::from_headers(&headers)?;
    let config = state.config.clone();
    let Received {
        settings,
        source,
        fingerprinting,
    } = source::receive(
        &config,
        &caller,
        format,
        pairs,
        body,
        idempotency_key.is_some(),
    )
    .await?;

    // A schedule that is already wrong is refused before a streamed body is read, unless
    // this may be the retry of an action that exists: that one is answered with the action.
    let early_schedule = domain::schedule::start_time(
        settings.scheduled_for,
        infra::clock::now(),
        config.schedule_horizon_days,
    );
    if let (Err(error), None) = (&early_schedule, &idempotency_key) {
        return Err(schedule_refused(*error));
    }

    let batch_size = batch_size_of(config.batch_size, settings.pacing);
    let crate::submission::RulesInForce {
        custom_fields,
        match_by,
        rules,
    } = crate::submission::rules_in_force(&state.store, &settings).await?;
    let mut staging = Staging::new(&state.store, &settings.account_id);
    let planned = ingest::plan_and_stage(
        {
            let max_record_bytes = config.max_record_bytes;
            let rules = rules.clone();
            move |sink: &mut RecordSink<'_>| source.read(max_record_bytes, &rules, sink)
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
    let outcome = match planned {
        Ok(summary) => {
            let body_fingerprint = fingerprinting.finish();
            let plan = commit::Plan {
                summary,
                batch_size,
                early_schedule,
                custom_fields,
                match_by,
            };
            commit::commit(
                &state,
                &caller,
                &settings,
                plan,
                idempotency_key.as_ref().zip(body_fingerprint.as_deref()),
                &staging,
            )
            .await
        }
        Err(error) => Err(error),
    };
    if !matches!(outcome, Ok(Committed::Created(_))) {
        if let Err(error) = staging.discard().await {
            tracing::warn!(%error, "could not drop a refused submission's staged records; they expire");
        }
    }
    match outcome? {
        Committed::Created(view) => {
            metrics::counter!(
                infra::metrics::names::ACTIONS_SUBMITTED,
                "action_type" => settings.action_type.as_str(),
                "entity_type" => settings.entity_type.as_str(),
            )
            .increment(1);
            Ok(accepted(*view))
        }
        Committed::Replayed(action) => replay(&state, action).await,
    }
}
