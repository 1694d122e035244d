//! Turning a submission's records into staged batches and outcome events while they
//! arrive, in memory bounded by a batch and the dedup set, whatever the upload's size.
//!
//! A reader (`ndjson`, `csv_rows`, or the records of a JSON body, `json`) reads records on
//! a blocking thread, where the `Planner` validates, deduplicates and batches them; the
//! planned pieces cross a small bounded channel to the request's task, which stages them in
//! Redis. The channel is the backpressure: a slow Redis slows the reading of the body, and
//! the body's bytes are never all in memory.

pub mod csv_rows;
pub mod json;
pub mod ndjson;
mod upload;

use axum::http::StatusCode;
use domain::{OutcomeCode, PlanSummary, Planned, Planner};
use infra::staging::Staging;
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorCode};

pub use upload::{body_reader, BodyTooLarge, Fingerprint};

/// Planned pieces in flight between the planning thread and the staging task.
const CHANNEL_DEPTH: usize = 16;
/// Pieces staged per Redis round trip, at most.
const STAGE_GROUP: usize = 8;

/// One record of the input, or the place of one that could not be read.
pub enum Record {
    Value(Value),
    Unreadable {
        code: OutcomeCode,
        message: String,
    },
    /// A record known to fail before it is read: a retried row whose fields were not kept.
    Refused {
        key: Option<String>,
        code: OutcomeCode,
        message: String,
    },
}

/// A record of an upload without the columns a result file adds to it (`_index`,
/// `_status`, ...: `domain::results::RESULT_COLUMNS`), so that a result file, fixed, is
/// submitted as it is. No record field starts with `_`, so nothing of the record is lost.
pub fn without_result_columns(mut value: Value) -> Value {
    if let Value::Object(object) = &mut value {
        object.retain(|name, _| !domain::results::is_result_column(name));
    }
    value
}

/// The most an action may hold; past either, the upload is refused.
#[derive(Debug, Clone, Copy)]
pub struct PlanLimits {
    pub max_records: usize,
    pub max_batches: u32,
    /// Records per batch, to tell the client the smallest batch size that would do.
    pub batch_size: usize,
}

/// Why a whole upload is refused: nothing of it becomes an action.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("an action may hold at most {limit} records")]
    TooManyRecords { limit: usize },
    #[error("an action may be cut into at most {limit} batches; batches of {batch_size} records make more: raise pacing.batchSize (pacingBatchSize) or split the records")]
    TooManyBatches { limit: u32, batch_size: usize },
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
    #[error("{message}")]
    CsvHeader {
        message: String,
        details: serde_json::Value,
    },
    #[error("CSV row {row} is longer than {limit} bytes; is a quote left open?")]
    CsvRowTooLarge { row: u64, limit: usize },
    /// A JSON body that turned out not to be JSON the api reads, found in a record.
    #[error("{message}")]
    MalformedJson {
        message: String,
        details: serde_json::Value,
    },
}

impl UploadError {
    /// A failed read of the body: too large, or the client went away.
    pub fn from_io(error: std::io::Error) -> Self {
        let too_large = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<BodyTooLarge>())
            .map(|too_large| too_large.limit);
        match too_large {
            Some(limit) => UploadError::BodyTooLarge { limit },
            None => UploadError::Unreadable(error.to_string()),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(error: UploadError) -> Self {
        let message = error.to_string();
        match error {
            UploadError::TooManyRecords { limit } => {
                ApiError::bad_request(ErrorCode::TooManyRecords, message)
                    .with_details(json!({ "limit": limit }))
            }
            UploadError::TooManyBatches { limit, batch_size } => {
                ApiError::bad_request(ErrorCode::TooManyBatches, message)
                    .with_details(json!({ "limit": limit, "batchSize": batch_size }))
            }
            UploadError::BodyTooLarge { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                message,
            )
            .with_details(json!({ "limit": limit })),
            UploadError::Unreadable(_) => ApiError::bad_request(ErrorCode::UnreadableBody, message),
            UploadError::CsvHeader { details, .. } => {
                ApiError::bad_request(ErrorCode::InvalidCsvHeader, message).with_details(details)
            }
            UploadError::MalformedJson { details, .. } => {
                ApiError::bad_request(ErrorCode::MalformedJson, message).with_details(details)
            }
            UploadError::CsvRowTooLarge { row, limit } => {
                ApiError::bad_request(ErrorCode::RecordTooLarge, message)
                    .with_details(json!({ "row": row, "limit": limit }))
            }
        }
    }
}

/// Where a reader hands each record it reads; an error stops the reading.
pub type RecordSink<'a> = dyn FnMut(Record) -> Result<(), UploadError> + 'a;

/// Hands every record of `records` to `sink`.
pub fn feed(
    records: impl Iterator<Item = Result<Record, UploadError>>,
    sink: &mut RecordSink<'_>,
) -> Result<(), UploadError> {
    records.into_iter().try_for_each(|record| sink(record?))
}

/// Plans the records `read` hands over and stages what it plans. `read` runs on a
/// blocking thread: it may block on the request body. On any error the staging area is
/// left to its caller to discard.
pub async fn plan_and_stage(
    read: impl FnOnce(&mut RecordSink<'_>) -> Result<(), UploadError> + Send + 'static,
    mut planner: Planner,
    limits: PlanLimits,
    staging: &mut Staging,
) -> Result<PlanSummary, ApiError> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Planned>(CHANNEL_DEPTH);
    let planning = tokio::task::spawn_blocking(move || -> Result<PlanSummary, UploadError> {
        let send = |planned: Planned| {
            // The receiver is gone only when staging failed; its error is the one reported.
            sender
                .blocking_send(planned)
                .map_err(|_| UploadError::Unreadable("staging stopped".into()))
        };
        read(&mut |record: Record| -> Result<(), UploadError> {
            if planner.records() as usize >= limits.max_records {
                return Err(UploadError::TooManyRecords {
                    limit: limits.max_records,
                });
            }
            if planner.batches() >= limits.max_batches {
                return Err(UploadError::TooManyBatches {
                    limit: limits.max_batches,
                    batch_size: limits.batch_size,
                });
            }
            let planned = match record {
                Record::Value(value) => planner.push(&value),
                Record::Unreadable { code, message } => planner.push_unreadable(code, message),
                Record::Refused { key, code, message } => planner.push_refused(key, code, message),
            };
            planned.map_or(Ok(()), send)
        })?;
        let (rest, summary) = planner.finish();
        rest.into_iter().try_for_each(send)?;
        Ok(summary)
    });

    let mut staged = Ok(());
    let mut group = Vec::with_capacity(STAGE_GROUP);
    while let Some(first) = receiver.recv().await {
        group.push(first);
        while group.len() < STAGE_GROUP {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        staged = staging.put(&group).await;
        group.clear();
        if staged.is_err() {
            break;
        }
    }
    drop(receiver);
    let planned = planning.await.map_err(ApiError::internal)?;
    staged?;
    Ok(planned?)
}
