//! The events a bulk action is made of, and the envelope they travel in.
//!
//! The envelope's fields are stored as separate fields of a Redis stream entry; the payload
//! is stored as JSON under its type name. Streams are never rewritten, so events written by
//! older builds stay in them for good: `decode` upcasts each stored version to the current
//! shape, one version step at a time (see `upcast`), before the domain sees it.

use serde::{Deserialize, Serialize};

use crate::fields::FieldDefinitions;
use ulid::Ulid;

use crate::action::ActionType;
use crate::entity::EntityType;
use crate::ids::{AccountId, ActionId};
use crate::key::MatchBy;
use crate::outcome::RecordOutcome;
use crate::pacing::Pacing;
use crate::results::SubmittedRecord;
use crate::time::Timestamp;

/// The schema version written by this build.
///
/// - 1: the first release.
/// - 2: `BatchProcessed` names the consumer in `consumer` (was the optional `appliedBy`) and
///   says which `attempt` applied it; `BatchDeadLettered` exists.
/// - 3: pacing on `Created`; `Paused`, `Resumed`, `CancelRequested`, `BatchCancelled`,
///   `Rescheduled` and `PacingChanged` exist. Nothing changed shape, so no upcast step:
///   the bump makes older builds refuse these streams instead of misreading them.
/// - 4: result files and retries. `RecordRejected`, `RecordSkipped`, `BatchProcessed`,
///   `BatchDeadLettered` and `BatchCancelled` carry `submitted`, the fields of each of their
///   records that did not succeed (`results::SubmittedRecord`); `Created` may name the
///   action it retries (`retryOf`); `RetryCreated` exists. Additive, no upcast: an older
///   event has no `submitted` (its result rows have no fields); the bump makes older
///   builds refuse these streams rather than drop what they cannot read.
pub const SCHEMA_VERSION: u16 = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    pub event_id: Ulid,
    pub action_id: ActionId,
    /// 1-based, gap-free position of the event in its action's stream.
    pub seq: u64,
    pub schema_version: u16,
    pub occurred_at: Timestamp,
    pub payload: EventPayload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum EventPayload {
    /// The action was accepted. Always seq 1.
    #[serde(rename_all = "camelCase")]
    Created {
        account_id: AccountId,
        entity_type: EntityType,
        action_type: ActionType,
        total_records: u32,
        batch_count: u32,
        #[serde(default)]
        scheduled_for: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pacing: Option<Pacing>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_records_per_minute: Option<u32>,
        /// The id of the API key that submitted it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_id: Option<String>,
        /// The account's own fields its records were checked against (none: only the
        /// built-in ones).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_fields: Option<FieldDefinitions>,
        /// The key its records were matched and deduplicated by (absent: the natural key).
        #[serde(default, skip_serializing_if = "MatchBy::is_natural")]
        match_by: MatchBy,
        /// The action whose records this one retries (`POST /bulk-actions/{id}/retry`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_of: Option<ActionId>,
    },
    /// Records that failed validation at submission (one event per chunk).
    RecordRejected {
        records: Vec<RecordOutcome>,
        /// Each record as it was sent (cut at `results::RAW_RECORD_MAX_BYTES`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        submitted: Vec<SubmittedRecord>,
    },
    /// Records skipped at submission, e.g. duplicate emails (one event per chunk).
    RecordSkipped {
        records: Vec<RecordOutcome>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        submitted: Vec<SubmittedRecord>,
    },
    /// A scheduled action's start time came and its batches were queued.
    Released {},
    /// A consumer picked up the action's first batch.
    Started {},
    /// One batch was applied; one outcome per record of the batch.
    #[serde(rename_all = "camelCase")]
    BatchProcessed {
        batch: u32,
        outcomes: Vec<RecordOutcome>,
        /// The consumer that applied it, for operators.
        consumer: String,
        /// Which attempt at the batch succeeded, counted across consumers and crashes.
        attempt: u32,
        /// The records whose outcome did not succeed, in submission form.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        submitted: Vec<SubmittedRecord>,
    },
    /// One batch failed on every allowed attempt and went to the dead-letter stream; each of
    /// its records is `dead_lettered`.
    #[serde(rename_all = "camelCase")]
    BatchDeadLettered {
        batch: u32,
        attempts: u32,
        /// The last error seen, for operators.
        error: String,
        outcomes: Vec<RecordOutcome>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        submitted: Vec<SubmittedRecord>,
    },
    /// The action stopped taking budget; it keeps its place and its queued batches.
    #[serde(rename_all = "camelCase")]
    Paused {
        /// The API key that asked for it (as on every event a client causes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_id: Option<String>,
    },
    /// A paused action goes on where it was.
    #[serde(rename_all = "camelCase")]
    Resumed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_id: Option<String>,
    },
    /// The action is being cancelled: batches already being applied finish, every other
    /// batch is settled by `BatchCancelled`, then `Completed` ends it as `cancelled`.
    #[serde(rename_all = "camelCase")]
    CancelRequested {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_id: Option<String>,
    },
    /// A batch that was never applied because of a cancel; each record is `unprocessed`.
    BatchCancelled {
        batch: u32,
        outcomes: Vec<RecordOutcome>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        submitted: Vec<SubmittedRecord>,
    },
    /// A scheduled action's start time moved.
    #[serde(rename_all = "camelCase")]
    Rescheduled {
        scheduled_for: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_id: Option<String>,
    },
    /// The action's pace changed; `None` fields remove that limit.
    #[serde(rename_all = "camelCase")]
    PacingChanged {
        pacing: Option<Pacing>,
        max_records_per_minute: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_id: Option<String>,
    },
    /// Every record has an outcome.
    Completed {},
    /// A retry of some of this action's records was created (appended to the original).
    #[serde(rename_all = "camelCase")]
    RetryCreated {
        retry: ActionId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_id: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event schema version {0} is newer than this build understands ({SCHEMA_VERSION})")]
    FutureVersion(u16),
    #[error("event payload is not valid: {0}")]
    Payload(#[from] serde_json::Error),
}

impl EventPayload {
    pub fn type_name(&self) -> &'static str {
        match self {
            EventPayload::Created { .. } => "Created",
            EventPayload::RecordRejected { .. } => "RecordRejected",
            EventPayload::RecordSkipped { .. } => "RecordSkipped",
            EventPayload::Released {} => "Released",
            EventPayload::Started {} => "Started",
            EventPayload::BatchProcessed { .. } => "BatchProcessed",
            EventPayload::BatchDeadLettered { .. } => "BatchDeadLettered",
            EventPayload::Paused { .. } => "Paused",
            EventPayload::Resumed { .. } => "Resumed",
            EventPayload::CancelRequested { .. } => "CancelRequested",
            EventPayload::BatchCancelled { .. } => "BatchCancelled",
            EventPayload::Rescheduled { .. } => "Rescheduled",
            EventPayload::PacingChanged { .. } => "PacingChanged",
            EventPayload::Completed {} => "Completed",
            EventPayload::RetryCreated { .. } => "RetryCreated",
        }
    }

    /// The JSON stored under the type name.
    pub fn data_json(&self) -> String {
        let tagged = serde_json::to_value(self).unwrap_or_default();
        tagged
            .get("data")
            .map(ToString::to_string)
            .unwrap_or_else(|| "{}".to_owned())
    }

    pub fn decode(type_name: &str, schema_version: u16, data: &str) -> Result<Self, DecodeError> {
        if schema_version > SCHEMA_VERSION {
            return Err(DecodeError::FutureVersion(schema_version));
        }
        let mut data: serde_json::Value = serde_json::from_str(data)?;
        for from in schema_version..SCHEMA_VERSION {
            data = upcast(type_name, from, data);
        }
        let tagged = serde_json::json!({ "type": type_name, "data": data });
        Ok(serde_json::from_value(tagged)?)
    }

    /// The per-record outcomes this event settles, for the log view.
    pub fn record_outcomes(&self) -> &[RecordOutcome] {
        match self {
            EventPayload::RecordRejected { records, .. }
            | EventPayload::RecordSkipped { records, .. } => records,
            EventPayload::BatchProcessed { outcomes, .. }
            | EventPayload::BatchDeadLettered { outcomes, .. }
            | EventPayload::BatchCancelled { outcomes, .. } => outcomes,
            _ => &[],
        }
    }

    /// The fields of the records this event settles without success (schema version 4;
    /// empty before it), for the result files.
    pub fn submitted_records(&self) -> &[SubmittedRecord] {
        match self {
            EventPayload::RecordRejected { submitted, .. }
            | EventPayload::RecordSkipped { submitted, .. }
            | EventPayload::BatchProcessed { submitted, .. }
            | EventPayload::BatchDeadLettered { submitted, .. }
            | EventPayload::BatchCancelled { submitted, .. } => submitted,
            _ => &[],
        }
    }
}

/// Rewrites the stored data of a `type_name` event from schema version `from` to `from + 1`.
///
/// Pure JSON to JSON, so each step is written once against the shape it was stored in and
/// never has to change when later versions arrive.
fn upcast(type_name: &str, from: u16, mut data: serde_json::Value) -> serde_json::Value {
    match (from, type_name) {
        // v2 named the consumer `consumer` (always present) and added `attempt`. v1 builds
        // retried a batch inside one delivery without counting; 1 is the only attempt
        // number a v1 event can vouch for.
        (1, "BatchProcessed") => {
            if let Some(fields) = data.as_object_mut() {
                let consumer = fields
                    .remove("appliedBy")
                    .filter(|name| name.is_string())
                    .unwrap_or_else(|| serde_json::Value::from("unknown"));
                fields.insert("consumer".to_owned(), consumer);
                fields.insert("attempt".to_owned(), serde_json::Value::from(1));
            }
            data
        }
        _ => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::OutcomeCode;

    #[test]
    fn payload_round_trips_through_type_and_data() {
        let payloads = vec![
            EventPayload::Created {
                retry_of: None,
                account_id: AccountId::parse("acme").unwrap(),
                entity_type: EntityType::Contact,
                action_type: ActionType::Upsert,
                total_records: 3,
                batch_count: 1,
                scheduled_for: Timestamp::parse_rfc3339("2030-01-01T00:00:00Z"),
                pacing: Some(Pacing {
                    batch_size: 10,
                    interval_seconds: 60,
                }),
                max_records_per_minute: None,
                api_key_id: Some("01JDQ6V4J8Q0Y5Z6X7W8V9T0S1".into()),
                custom_fields: FieldDefinitions::parse(
                    &serde_json::json!({
                        "fields": [{ "name": "seats", "type": "string" }]
                    }),
                    EntityType::Contact,
                )
                .ok(),
                match_by: MatchBy::ExternalId {
                    field: "seats".into(),
                    slot: 1,
                },
            },
            EventPayload::CancelRequested { api_key_id: None },
            EventPayload::BatchCancelled {
                submitted: Vec::new(),
                batch: 1,
                outcomes: vec![RecordOutcome {
                    index: 3,
                    email: Some("e@f.co".into()),
                    code: OutcomeCode::Unprocessed,
                    message: None,
                }],
            },
            EventPayload::Rescheduled {
                scheduled_for: Timestamp::parse_rfc3339("2031-01-01T00:00:00Z").unwrap(),
                api_key_id: Some("k".into()),
            },
            EventPayload::PacingChanged {
                pacing: None,
                max_records_per_minute: Some(100),
                api_key_id: None,
            },
            EventPayload::BatchProcessed {
                submitted: Vec::new(),
                batch: 4,
                outcomes: vec![RecordOutcome {
                    index: 7,
                    email: Some("a@b.co".into()),
                    code: OutcomeCode::NotFound,
                    message: None,
                }],
                consumer: "consumer-1".into(),
                attempt: 2,
            },
            EventPayload::BatchDeadLettered {
                submitted: Vec::new(),
                batch: 5,
                attempts: 8,
                error: "mongodb: boom".into(),
                outcomes: vec![RecordOutcome {
                    index: 9,
                    email: Some("c@d.co".into()),
                    code: OutcomeCode::DeadLettered,
                    message: Some("gave up".into()),
                }],
            },
            EventPayload::RecordRejected {
                records: vec![RecordOutcome::new(0, None, OutcomeCode::InvalidEmail, None)],
                submitted: vec![crate::results::SubmittedRecord::raw(
                    0,
                    &serde_json::json!({"email": "x", "age": 3}),
                )],
            },
            EventPayload::RetryCreated {
                retry: ActionId::from_ulid(Ulid::new()),
                api_key_id: Some("k".into()),
            },
            EventPayload::Started {},
            EventPayload::Completed {},
        ];
        for payload in payloads {
            let decoded =
                EventPayload::decode(payload.type_name(), SCHEMA_VERSION, &payload.data_json())
                    .unwrap();
            assert_eq!(decoded, payload);
        }
    }

    /// A v3 event has no `submitted`: it decodes with none, and so has rows without fields.
    #[test]
    fn version_3_outcome_events_decode_without_submitted_records() {
        let stored = r#"{"records":[{"index":0,"email":"x","code":"invalid_email"}]}"#;
        let decoded = EventPayload::decode("RecordRejected", 3, stored).unwrap();
        assert_eq!(decoded.record_outcomes().len(), 1);
        assert!(decoded.submitted_records().is_empty());
    }

    #[test]
    fn future_versions_are_refused_not_misread() {
        assert!(matches!(
            EventPayload::decode("Started", SCHEMA_VERSION + 1, "{}"),
            Err(DecodeError::FutureVersion(_))
        ));
        assert!(EventPayload::decode("Nope", SCHEMA_VERSION, "{}").is_err());
    }

    /// Exactly what a v1 build stored (infra writes `data` verbatim): the upcaster must
    /// turn it into today's payload, with and without the optional `appliedBy`.
    #[test]
    fn version_1_batch_processed_is_upcast() {
        let stored = r#"{"batch":3,"outcomes":[{"index":0,"email":"a@b.co","code":"updated"}],"appliedBy":"host-7-0"}"#;
        let decoded = EventPayload::decode("BatchProcessed", 1, stored).unwrap();
        assert_eq!(
            decoded,
            EventPayload::BatchProcessed {
                submitted: Vec::new(),
                batch: 3,
                outcomes: vec![RecordOutcome {
                    index: 0,
                    email: Some("a@b.co".into()),
                    code: OutcomeCode::Updated,
                    message: None,
                }],
                consumer: "host-7-0".into(),
                attempt: 1,
            }
        );
        let anonymous = EventPayload::decode("BatchProcessed", 1, r#"{"batch":0,"outcomes":[]}"#);
        assert!(matches!(
            anonymous,
            Ok(EventPayload::BatchProcessed { consumer, attempt: 1, .. }) if consumer == "unknown"
        ));
        // Other v1 events are unchanged by the step.
        assert_eq!(
            EventPayload::decode("Completed", 1, "{}").unwrap(),
            EventPayload::Completed {}
        );
    }
}
