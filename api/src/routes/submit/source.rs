//! What a submission brings: its format, its settings, where its records come from, and
//! how it is told apart from another with the same `Idempotency-Key`.

use std::io::BufReader;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use domain::RecordRules;
use serde_json::json;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::ingest::json::JsonBody;
use crate::ingest::{self, csv_rows, ndjson, Fingerprint, RecordSink};
use crate::submission::{self, ActionSettings};
use crate::Settings;

/// What a `POST /bulk-actions` body is, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    Ndjson,
    Csv,
}

impl Format {
    const SUPPORTED: [&'static str; 3] = ["application/json", "application/x-ndjson", "text/csv"];

    pub(super) fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
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
pub(super) enum Source {
    Json(Box<JsonBody>),
    Ndjson(Box<dyn std::io::Read + Send>),
    Csv(Box<dyn std::io::Read + Send>),
}

impl Source {
    pub(super) fn read(
        self,
        max_record_bytes: usize,
        rules: &RecordRules,
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
            Source::Csv(body) => ingest::feed(csv_rows::open(body, max_record_bytes, rules)?, sink),
        }
    }
}

const READ_BUFFER: usize = 64 * 1024;

/// How the submission is told apart from another with the same `Idempotency-Key`.
pub(super) enum Fingerprinting {
    Off,
    Known(String),
    /// Computed as the body streams by; complete once it has been read.
    Streaming(Fingerprint),
}

impl Fingerprinting {
    pub(super) fn finish(self) -> Option<String> {
        match self {
            Fingerprinting::Off => None,
            Fingerprinting::Known(hex) => Some(hex),
            Fingerprinting::Streaming(fingerprint) => Some(fingerprint.hex()),
        }
    }
}

/// A submission whose settings have been read (a JSON body's from its first pass over the
/// spooled body, an upload's from the query), its records not yet.
pub(super) struct Received {
    pub(super) settings: ActionSettings,
    pub(super) source: Source,
    pub(super) fingerprinting: Fingerprinting,
}

pub(super) async fn receive(
    config: &Settings,
    caller: &Caller,
    format: Format,
    pairs: Vec<(String, String)>,
    body: Body,
    fingerprinted: bool,
) -> Result<Received, ApiError> {
    match format {
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
                fingerprinted,
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
            Ok(Received {
                settings,
                source: Source::Json(Box::new(body)),
                fingerprinting,
            })
        }
        Format::Ndjson | Format::Csv => {
            let query_text = canonical_query(&pairs);
            let settings = submission::parse_query(pairs, &caller.account)?;
            let fingerprint = fingerprinted.then(|| Fingerprint::new(&query_text));
            let reader = ingest::body_reader(body, config.max_upload_bytes, fingerprint.clone());
            let source = if format == Format::Csv {
                Source::Csv(Box::new(reader))
            } else {
                Source::Ndjson(Box::new(reader))
            };
            let fingerprinting = fingerprint.map_or(Fingerprinting::Off, Fingerprinting::Streaming);
            Ok(Received {
                settings,
                source,
                fingerprinting,
            })
        }
    }
}

/// The query parameters in a stable order, so that a retry that orders them differently
/// is still the same submission.
fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    sorted.sort();
    sorted.join("&")
}
