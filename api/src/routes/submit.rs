//! `POST /bulk-actions`: a JSON body with settings and records, or a streamed upload of
//! records (NDJSON or CSV) with the settings as query parameters.
//!
//! Either way the records go through the same planner and are staged in Redis as they are
//! planned; the action exists only once `commit_action` has made it exist, with all of its
//! records, in one step.

use std::io::BufReader;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use domain::view::{apply_event, fold};
use domain::{
    ActionId, ActionView, EventEnvelope, EventPayload, PlanSummary, Planner, ScheduleError,
    Timestamp, SCHEMA_VERSION,
};
use infra::event_store::{Commit, NewAction};
use infra::staging::Staging;
use serde_json::json;
use ulid::Ulid;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::idempotency::{self, Claim, IdempotencyKey};
use crate::ingest::json::JsonBody;
use crate::ingest::{self, csv_rows, ndjson, Fingerprint, RecordSink};
use crate::query::QueryPairs;
use crate::routes::actions::{accepted, batch_size_of, replay, schedule_refused};
use crate::submission::{self, ActionSettings};
use crate::AppState;

/// What a `POST /bulk-actions` body is, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    Csv,
}

impl Format {
    const SUPPORTED: [&'static str; 3] = ["application/json", "application/x-ndjson", "text/csv"];

    fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let essence = crate::extract::media_type(content_type).to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Ok(Format::Json),
            "application/x-ndjson" | "application/jsonl" => Ok(Format::Ndjson),
            "text/csv" => Ok(Format::Csv),
            _ => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "Content-Type must be application/json, application/x-ndjson or text/csv",
            )
            .with_details(json!({
                "received": domain::text::bounded(content_type, 256),
                "supported": Self::SUPPORTED,
            }))),
        }
    }
}

/// Where the records come from; read on the planning thread.
enum Source {
    Json(Box<JsonBody>),
    Ndjson(Box<dyn std::io::Read + Send>),
    Csv(Box<dyn std::io::Read + Send>),
}

impl Source {
    fn read(
        self,
        max_record_bytes: usize,
        sink: &mut RecordSink<'_>,
    ) -> Result<(), ingest::UploadError> {
        match self {
            Source::Json(body) => body.stream_records(max_record_bytes, sink),
            Source::Ndjson(body) => ingest::feed(
                ndjson::NdjsonRecords::new(
                    BufReader::with_capacity(READ_BUFFER, body),
                    max_record_bytes,
                ),
                sink,
            ),
            Source::Csv(body) => ingest::feed(csv_rows::open(body, max_record_bytes)?, sink),
        }
    }
}

const READ_BUFFER: usize = 64 * 1024;

/// How the submission is told apart from another with the same `Idempotency-Key`.
enum Fingerprinting {
    Off,
    Known(String),
    /// Computed as the body streams by; complete once it has been read.
    Streaming(Fingerprint),
}

impl Fingerprinting {
    fn finish(self) -> Option<String> {
        match self {
            Fingerprinting::Off => None,
            Fingerprinting::Known(hex) => Some(hex),
            Fingerprinting::Streaming(fingerprint) => Some(fingerprint.hex()),
        }
    }
}

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

    let (settings, source, fingerprinting) = match format {
        Format::Json => {
            if let Some((name, _)) = pairs.first() {
                return Err(crate::query::invalid(
                    name,
                    "is not accepted with a JSON body, whose settings are in the body",
                ));
            }
            let body = ingest::json::receive(
                body,
                config.max_body_bytes,
                config.max_record_bytes,
                idempotency_key.is_some(),
            )
            .await?;
            let settings = submission::settings_of(
                &body.outline,
                config.max_records_per_action,
                config.max_record_bytes,
                &caller.account,
            )?;
            let fingerprinting = body
                .fingerprint
                .clone()
                .map_or(Fingerprinting::Off, Fingerprinting::Known);
            (settings, Source::Json(Box::new(body)), fingerprinting)
        }
        Format::Ndjson | Format::Csv => {
            let query_text = canonical_query(&pairs);
            let settings = submission::parse_query(pairs, &caller.account)?;
            let fingerprint = idempotency_key
                .as_ref()
                .map(|_| Fingerprint::new(&query_text));
            let reader = ingest::body_reader(body, config.max_upload_bytes, fingerprint.clone());
            let source = if format == Format::Csv {
                Source::Csv(Box::new(reader))
            } else {
                Source::Ndjson(Box::new(reader))
            };
            let fingerprinting = fingerprint.map_or(Fingerprinting::Off, Fingerprinting::Streaming);
            (settings, source, fingerprinting)
        }
    };

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
    let mut staging = Staging::new(&state.store, &settings.account_id);
    let planned = ingest::plan_and_stage(
        {
            let max_record_bytes = config.max_record_bytes;
            move |sink: &mut RecordSink<'_>| source.read(max_record_bytes, sink)
        },
        Planner::new(settings.action_type, batch_size),
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
            commit(
                &state,
                &caller,
                &settings,
                summary,
                early_schedule,
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
        Committed::Created(view) => Ok(accepted(*view)),
        Committed::Replayed(action) => replay(&state, action).await,
    }
}

enum Committed {
    Created(Box<ActionView>),
    /// An `Idempotency-Key` names an action that exists: the answer is that action.
    Replayed(ActionId),
}

async fn commit(
    state: &AppState,
    caller: &Caller,
    settings: &ActionSettings,
    summary: PlanSummary,
    early_schedule: Result<Option<Timestamp>, ScheduleError>,
    idempotency: Option<(&IdempotencyKey, &str)>,
    staging: &Staging,
) -> Result<Committed, ApiError> {
    if summary.total_records == 0 {
        return Err(ApiError::bad_request(
            ErrorCode::EmptyData,
            "the submission must contain at least one record",
        ));
    }
    let created_at = infra::clock::now();
    let start_at = match (early_schedule, idempotency) {
        (Ok(_), _) => {
            match domain::schedule::start_time(
                settings.scheduled_for,
                created_at,
                state.config.schedule_horizon_days,
            ) {
                Ok(start_at) => start_at,
                // Its time came while the upload was arriving: it starts now.
                Err(ScheduleError::InPast { .. }) => None,
                Err(error) => return Err(schedule_refused(error)),
            }
        }
        (Err(error), Some((key, fingerprint))) => {
            // A resubmission of an action that exists gets it, even once its time has passed.
            let existing =
                idempotency::committed(state, &settings.account_id, key, fingerprint).await?;
            return match existing {
                Some(action) => Ok(Committed::Replayed(action)),
                None => Err(schedule_refused(error)),
            };
        }
        (Err(error), None) => return Err(schedule_refused(error)),
    };

    let candidate = state.next_action_id(&settings.account_id);
    let action_id = match idempotency {
        Some((key, fingerprint)) => {
            match idempotency::claim(state, &settings.account_id, key, fingerprint, candidate)
                .await?
            {
                Claim::Proceed(id) => id,
                Claim::Replay(id) => return Ok(Committed::Replayed(id)),
            }
        }
        None => candidate,
    };
    let batch_size = batch_size_of(state.config.batch_size, settings.pacing);
    let created = EventPayload::Created {
        account_id: settings.account_id.clone(),
        entity_type: settings.entity_type,
        action_type: settings.action_type,
        total_records: summary.total_records,
        batch_count: summary.batch_count,
        scheduled_for: settings.scheduled_for,
        pacing: settings.pacing,
        max_records_per_minute: settings.max_records_per_minute,
        api_key_id: Some(caller.key_id.clone()),
    };
    let mut events = vec![created];
    if summary.batch_count == 0 {
        events.push(EventPayload::Completed {});
    }
    let new_action = NewAction {
        action_id,
        account_id: &settings.account_id,
        action_type: settings.action_type,
        entity_type: settings.entity_type,
        batch_count: summary.batch_count,
        batch_size: batch_size as u32,
        records_in_batches: summary.records_in_batches,
        pace: domain::pacing::action_bucket(
            settings.pacing,
            settings.max_records_per_minute,
            batch_size as u32,
        ),
        start_at,
        created_at,
        events,
        staging,
    };
    if state.store.commit_action(&new_action).await? == Commit::AlreadyExisted {
        return Ok(Committed::Replayed(action_id));
    }
    tracing::info!(%action_id, account = %settings.account_id, records = summary.total_records, batches = summary.batch_count, "bulk action accepted");
    Ok(Committed::Created(Box::new(opening_view(
        &new_action,
        &summary,
    )?)))
}

/// The view as it stands right after acceptance: the fold of the events just committed,
/// with the staged outcome events counted from the plan's totals rather than read back.
fn opening_view(new_action: &NewAction<'_>, summary: &PlanSummary) -> Result<ActionView, ApiError> {
    let envelope = |payload: &EventPayload, seq: u64| EventEnvelope {
        event_id: Ulid::new(),
        action_id: new_action.action_id,
        seq,
        schema_version: SCHEMA_VERSION,
        occurred_at: new_action.created_at,
        payload: payload.clone(),
    };
    let folding_error = |_| ApiError::internal("opening events do not fold");
    let mut events = new_action.events.iter();
    let created = events.next().map(|created| envelope(created, 1));
    let mut view = fold(None, created.as_ref())
        .map_err(folding_error)?
        .ok_or_else(|| ApiError::internal("no Created event"))?;
    for (code, records) in &summary.opening_outcomes {
        view.tally(*code, *records);
    }
    view.last_seq = 1 + u64::from(summary.outcome_events);
    for payload in events {
        let next = envelope(payload, view.last_seq + 1);
        view = apply_event(Some(view), &next)
            .map_err(folding_error)?
            .ok_or_else(|| ApiError::internal("the view vanished"))?;
    }
    Ok(view)
}

/// The query parameters in a stable order, so that a retry that orders them differently
/// is still the same submission.
fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    sorted.sort();
    sorted.join("&")
}
