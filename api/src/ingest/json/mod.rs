//! `application/json`: settings and a `data` array of records in one body, read in memory
//! bounded by one record whatever the body's size.
//!
//! The body is spooled as it arrives (and fingerprinted on the way, for
//! `Idempotency-Key`): in memory up to `SPOOL_IN_MEMORY`, past that to an unnamed temporary
//! file. A first pass (`outline`) reads the settings and counts
//! the records, skipping them; a second (`records`) streams the records into the planner.
//! Two passes because the settings the planner needs (`actionType`, `pacing`) may come
//! after `data` in the body.

mod outline;
mod records;
mod tap;

use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

use axum::body::Body;
use serde_json::json;
use tempfile::SpooledTempFile;

use super::{body_reader, Fingerprint, UploadError};
use crate::error::{ApiError, ErrorCode};
use crate::submission::FIELDS;

pub use outline::{DataShape, Outline};
use tap::TapFailure;

/// Nesting a body may have: the top-level object, `data`, and 126 levels in a record.
/// serde_json would refuse a record deeper than 128 levels anyway.
const MAX_DEPTH: usize = 128;
const READ_BUFFER: usize = 64 * 1024;
/// A body up to this size is spooled in memory; a larger one goes to disk.
const SPOOL_IN_MEMORY: usize = 1024 * 1024;

/// A JSON body, received whole and outlined; its records not read yet.
pub struct JsonBody {
    pub outline: Outline,
    /// SHA-256 of the body's bytes, when asked for.
    pub fingerprint: Option<String>,
    spool: SpooledTempFile,
}

/// Receives `body` (at most `max_body_bytes`) and reads its outline, each setting at most
/// `max_value_bytes` long.
pub async fn receive(
    body: Body,
    max_body_bytes: usize,
    max_value_bytes: usize,
    fingerprint: bool,
) -> Result<JsonBody, ApiError> {
    let fingerprint = fingerprint.then(Fingerprint::of_body);
    let reader = body_reader(body, max_body_bytes, fingerprint.clone());
    tokio::task::spawn_blocking(move || -> Result<JsonBody, ApiError> {
        let mut spool = spool(reader)?;
        let outline = read_outline(
            BufReader::with_capacity(READ_BUFFER, &mut spool),
            max_value_bytes,
        )?;
        Ok(JsonBody {
            outline,
            fingerprint: fingerprint.map(|fingerprint| fingerprint.hex()),
            spool,
        })
    })
    .await
    .map_err(ApiError::internal)?
}

/// The outline of the JSON body in `reader` (see `outline`). Blocking.
pub fn read_outline(reader: impl io::BufRead, max_value_bytes: usize) -> Result<Outline, ApiError> {
    outline::read(reader, max_value_bytes)
}

impl JsonBody {
    /// Hands each record of `data` to `sink`. Blocking: for the planning thread.
    pub fn stream_records(
        mut self,
        max_record_bytes: usize,
        sink: &mut super::RecordSink<'_>,
    ) -> Result<(), UploadError> {
        let DataShape::Array { offset, .. } = self.outline.data else {
            return Ok(());
        };
        self.spool
            .seek(SeekFrom::Start(offset))
            .map_err(|error| UploadError::Unreadable(error.to_string()))?;
        let reader = BufReader::with_capacity(READ_BUFFER, self.spool);
        records::stream(reader, max_record_bytes, sink)
    }
}

/// Copies the body into memory or, once it is larger than `SPOOL_IN_MEMORY`, an unnamed
/// temporary file (gone when closed, even after a crash).
fn spool(mut body: impl Read) -> Result<SpooledTempFile, ApiError> {
    let mut file = tempfile::spooled_tempfile(SPOOL_IN_MEMORY);
    let mut buffer = vec![0; READ_BUFFER];
    loop {
        let read = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(UploadError::from_io(error).into()),
        };
        file.write_all(&buffer[..read]).map_err(spool_failed)?;
    }
    file.rewind().map_err(spool_failed)?;
    Ok(file)
}

fn spool_failed(error: io::Error) -> ApiError {
    crate::error::unavailable("spool", &format!("temporary file for the body: {error}"))
}

/// The body is not JSON: where serde_json stopped.
fn malformed(error: &serde_json::Error) -> ApiError {
    ApiError::bad_request(
        ErrorCode::MalformedJson,
        format!("request body is not valid JSON: {error}"),
    )
    .with_details(json!({ "line": error.line(), "column": error.column() }))
}

fn too_deep(limit: usize) -> (String, serde_json::Value) {
    (
        format!("request body is not valid JSON: nested deeper than {limit} levels"),
        json!({ "limit": limit }),
    )
}

fn refused_by_tap(failure: TapFailure) -> ApiError {
    match failure {
        TapFailure::TooDeep { limit } => {
            let (message, details) = too_deep(limit);
            ApiError::bad_request(ErrorCode::MalformedJson, message).with_details(details)
        }
        TapFailure::NameTooLong { limit } => ApiError::bad_request(
            ErrorCode::UnknownField,
            format!("a field name is longer than {limit} bytes"),
        )
        .with_details(json!({ "limit": limit, "allowed": FIELDS })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Record;

    fn records(json: &str, limit: usize) -> Vec<Result<serde_json::Value, String>> {
        let outline = outline::read(json.as_bytes(), 100).unwrap_or_else(|e| panic!("{e:?}"));
        let DataShape::Array { offset, .. } = outline.data else {
            panic!("no data array");
        };
        let mut seen = Vec::new();
        let mut sink = |record: Record| {
            seen.push(match record {
                Record::Value(value) => Ok(value),
                Record::Unreadable { code, .. } | Record::Refused { code, .. } => {
                    Err(code.as_str().to_owned())
                }
            });
            Ok(())
        };
        let rest = &json.as_bytes()[offset as usize..];
        records::stream(BufReader::with_capacity(2, rest), limit, &mut sink).unwrap();
        seen
    }

    #[test]
    fn settings_after_data_are_read_before_the_records() {
        let body = r#"{ "data" : [ {"email":"a@x.io"}, 7 ,"s", [1] ], "actionType": "upsert", "pacing": {"batchSize": 5, "intervalSeconds": 1}}"#;
        let outline = outline::read(body.as_bytes(), 100).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(outline.settings["actionType"], "upsert");
        assert_eq!(outline.settings["pacing"]["batchSize"], 5);
        assert!(matches!(outline.data, DataShape::Array { records: 4, .. }));
        assert_eq!(
            records(body, 100),
            vec![
                Ok(json!({"email":"a@x.io"})),
                Ok(json!(7)),
                Ok(json!("s")),
                Ok(json!([1]))
            ]
        );
    }

    #[test]
    fn a_record_past_the_limit_fails_alone_and_keeps_its_place() {
        let long = "n".repeat(50);
        let body =
            format!(r#"{{"data":[{{"name":"{long}"}},12345,{{"email":"a@x.io"}}, 1234567]}}"#);
        let got = records(&body, 5);
        assert_eq!(got[0], Err("record_too_large".to_owned()));
        assert_eq!(got[1], Ok(json!(12345)));
        assert_eq!(got[2], Err("record_too_large".to_owned()));
        assert_eq!(got[3], Err("record_too_large".to_owned()));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn hostile_shapes_are_refused_without_holding_them() {
        let code = |body: &str| match outline::read(body.as_bytes(), 10) {
            Ok(_) => "ok",
            Err(error) => error.code().as_str(),
        };
        let deep = format!(r#"{{"data":[{}]}}"#, "[".repeat(10_000));
        assert_eq!(code(&deep), "malformed_json");
        let long_name = format!(r#"{{"{}":1}}"#, "k".repeat(5_000));
        assert_eq!(code(&long_name), "unknown_field");
        let long_value = format!(r#"{{"actionType":"{}"}}"#, "k".repeat(5_000));
        let outline = outline::read(long_value.as_bytes(), 10).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(outline.oversized.as_deref(), Some("actionType"));
        assert_eq!(code(r#"{"data":[1,]}"#), "malformed_json");
        assert_eq!(code(r#"{"data":[1]} x"#), "malformed_json");
    }
}
