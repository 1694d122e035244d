//! What result files keep of a record that did not succeed: its fields in the form a client
//! submits them, so that a failed file, fixed, can be submitted again as it is.
//!
//! Two sources: a record refused or skipped at submission is kept as it was sent (the JSON
//! object, or what a CSV row became under its header), cut at `RAW_RECORD_MAX_BYTES`; a
//! record of a batch that failed, was dead-lettered or never ran is kept as its validated
//! change written back in submission form (`submitted_form`), which plans to the same change.
//!
//! Result columns start with `_`, which no record field can (built-in and account field
//! names start with a letter, `fields::is_field_name`), so a result row is a record plus
//! columns that uploads drop (`is_result_column`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::change::RecordChange;
use crate::entity::EntityType;
use crate::fields::{FieldChange, FieldValue};
use crate::key::MatchBy;
use crate::outcome::RecordOutcome;
use crate::time::Timestamp;

/// The columns of a result file before the record's fields, in order.
pub const RESULT_COLUMNS: [&str; 6] = ["_index", "_key", "_status", "_code", "_message", "_fields"];

/// Whether an upload drops this column (CSV, any case) or key (NDJSON, JSON): one of the
/// result columns, so that a result file is a valid upload as it is.
pub fn is_result_column(name: &str) -> bool {
    RESULT_COLUMNS
        .iter()
        .any(|column| column.eq_ignore_ascii_case(name.trim()))
}

/// The most a record rejected or skipped at submission keeps of itself, as JSON text: such
/// records can be any size up to `MAX_RECORD_BYTES` and arrive by the million.
pub const RAW_RECORD_MAX_BYTES: usize = 4 * 1024;

/// The most the kept records of one settled batch may take, as JSON text: past it, the
/// batch's later records keep nothing (`truncated`).
pub const BATCH_RECORDS_MAX_BYTES: usize = 8 << 20;

/// The most a settled batch's event may take with its outcomes and kept records: its
/// records keep what the outcomes leave of it, so that the event stays under the archive's
/// 12 MiB per event.
pub const SETTLED_EVENT_MAX_BYTES: usize = 10 << 20;

/// The most the kept records of one action may take, as JSON text, counted twice over:
/// once for the records refused or skipped at submission, and once for those of its settled
/// batches (`batch_room`). Past it, later records keep nothing (`truncated`). Without it, a
/// 1 GiB upload of text that JSON escapes six-fold (control characters) would keep several
/// GiB in Redis for the whole retention. An account's actions together are bounded too
/// (`RESULT_KEPT_MAX_BYTES_PER_ACCOUNT`).
pub const ACTION_RECORDS_MAX_BYTES: u64 = 256 << 20;

/// The room the kept records of the next settled batch of an action have, given what its
/// events already keep (`keptBytes` of its meta) and what its account's actions keep
/// (`account_kept`) against its limit (`account_limit`): at most
/// `BATCH_RECORDS_MAX_BYTES`. Batches settling at once may each take it, so the bounds are
/// passed by at most that many batches.
pub fn batch_room(action_kept: u64, account_kept: u64, account_limit: u64) -> usize {
    let left = ACTION_RECORDS_MAX_BYTES
        .saturating_sub(action_kept)
        .min(account_limit.saturating_sub(account_kept));
    usize::try_from(left).map_or(BATCH_RECORDS_MAX_BYTES, |left| {
        left.min(BATCH_RECORDS_MAX_BYTES)
    })
}

/// What `records` take once kept (`SubmittedRecord::stored_size`).
pub fn kept_size(records: &[SubmittedRecord]) -> u64 {
    records
        .iter()
        .map(|record| record.stored_size() as u64)
        .sum()
}

/// One record's fields as submitted, kept by the event that settled it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmittedRecord {
    pub index: u32,
    /// Field name to value, as a client writes them (a `null` clears, `{add, remove}`
    /// edits a list). Empty when nothing could be kept.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// Only part of the record (or none of it) is kept: it was too large. A retry leaves it
    /// out, and its result row says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// What a result row says about the fields it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptFields {
    /// The whole record: it can be submitted again as it is.
    Kept,
    /// The whole record, but a value has no CSV form that reads back the same
    /// (`reads_back_from_csv`): submit its NDJSON line, or fix the cell by hand.
    KeptInNdjson,
    /// Part of it: too large to keep whole.
    Truncated,
    /// None: a succeeded record, or one settled by an event before schema version 4.
    None,
}

impl KeptFields {
    pub fn as_str(self) -> &'static str {
        match self {
            KeptFields::Kept => "kept",
            KeptFields::KeptInNdjson => "kept_in_ndjson",
            KeptFields::Truncated => "truncated",
            KeptFields::None => "none",
        }
    }

    pub fn of(record: Option<&SubmittedRecord>) -> Self {
        match record {
            None => KeptFields::None,
            Some(record) if record.truncated => KeptFields::Truncated,
            Some(_) => KeptFields::Kept,
        }
    }

    /// `of`, for a CSV row.
    pub fn of_csv_row(record: Option<&SubmittedRecord>) -> Self {
        match Self::of(record) {
            KeptFields::Kept
                if record
                    .is_some_and(|record| !record.fields.values().all(reads_back_from_csv)) =>
            {
                KeptFields::KeptInNdjson
            }
            kept => kept,
        }
    }
}

impl SubmittedRecord {
    /// A record as it was sent, whole if its JSON text fits `RAW_RECORD_MAX_BYTES`, else
    /// the fields that fit (by name) and `truncated`. Not an object: nothing, `truncated`.
    pub fn raw(index: u32, record: &Value) -> Self {
        let Value::Object(object) = record else {
            return Self {
                index,
                fields: Map::new(),
                truncated: true,
            };
        };
        if json_len(record) <= RAW_RECORD_MAX_BYTES {
            return Self {
                index,
                fields: object.clone(),
                truncated: false,
            };
        }
        let mut fields = Map::new();
        // `{}` and a comma per field.
        let mut used = 2;
        for (name, value) in object {
            let cost = json_len(&Value::from(name.as_str())) + 1 + json_len(value) + 1;
            if used + cost <= RAW_RECORD_MAX_BYTES {
                used += cost;
                fields.insert(name.clone(), value.clone());
            }
        }
        Self {
            index,
            fields,
            truncated: true,
        }
    }

    /// A record that keeps nothing because its event had no room left for it.
    pub fn dropped(index: u32) -> Self {
        Self {
            index,
            fields: Map::new(),
            truncated: true,
        }
    }

    /// An upper bound of its JSON text in an event.
    pub fn stored_size(&self) -> usize {
        serde_json::to_string(&self.fields).map_or(0, |text| text.len()) + 40
    }
}

fn json_len(value: &Value) -> usize {
    serde_json::to_string(value).map_or(0, |text| text.len())
}

/// The record a client would submit for `change` of an `entity` matched by `match_by`: the
/// key under its field name, the natural key of an upsert by an external id, and each
/// field's change as JSON (a date as RFC 3339 text, a cleared field `null`, a list edit
/// `{"add", "remove"}`). `RecordChange::parse` of it gives `change` back.
pub fn submitted_form(
    change: &RecordChange,
    entity: EntityType,
    match_by: &MatchBy,
) -> Map<String, Value> {
    let spec = entity.spec();
    let mut record = Map::new();
    record.insert(
        match_by.record_field(spec).to_owned(),
        Value::from(change.key.as_str()),
    );
    if let Some(natural) = &change.natural_key {
        record.insert(spec.natural_key.to_owned(), Value::from(natural.as_str()));
    }
    for (name, field) in &change.fields {
        record.insert(name.to_owned(), change_json(field));
    }
    record
}

fn change_json(change: &FieldChange) -> Value {
    match change {
        FieldChange::Clear => Value::Null,
        FieldChange::Set(value) => value_json(value),
        FieldChange::Edit { add, remove } => {
            let mut edit = Map::new();
            if !add.is_empty() {
                edit.insert("add".into(), Value::from(add.clone()));
            }
            if !remove.is_empty() {
                edit.insert("remove".into(), Value::from(remove.clone()));
            }
            Value::Object(edit)
        }
    }
}

fn value_json(value: &FieldValue) -> Value {
    match value {
        FieldValue::Text(text) => Value::from(text.as_str()),
        // A whole number stays a number with a fraction (`2.0`), as a `number` field reads.
        FieldValue::Number(number) => {
            serde_json::Number::from_f64(*number).map_or(Value::Null, Value::Number)
        }
        FieldValue::Integer(integer) => Value::from(*integer),
        FieldValue::Boolean(flag) => Value::Bool(*flag),
        FieldValue::Date(millis) => match Timestamp::from_millis(*millis) {
            Some(at) => Value::from(at.to_string()),
            // Beyond chrono's range: no date field accepts one, so it cannot be planned.
            None => Value::from(*millis),
        },
        FieldValue::TextList(items) => Value::from(items.clone()),
    }
}

/// The records of `batch` (of an `entity`) whose outcome did not succeed, in submission
/// form, within `room` bytes (`batch_room`; later ones past it are kept `truncated`,
/// without fields).
pub fn batch_submitted(
    batch: &crate::plan::Batch,
    outcomes: &[RecordOutcome],
    entity: EntityType,
    room: usize,
) -> Vec<SubmittedRecord> {
    let failed: std::collections::HashSet<u32> = outcomes
        .iter()
        .filter(|outcome| outcome.status() != crate::outcome::OutcomeStatus::Succeeded)
        .map(|outcome| outcome.index)
        .collect();
    // The event carries the outcomes too: together they stay archivable.
    let outcome_bytes: usize = outcomes.iter().map(crate::plan::stored_size).sum();
    let room = room.min(SETTLED_EVENT_MAX_BYTES.saturating_sub(outcome_bytes));
    let mut used = 0;
    let mut kept = Vec::with_capacity(failed.len());
    for record in batch.records.iter().filter(|r| failed.contains(&r.index)) {
        let submitted = SubmittedRecord {
            index: record.index,
            fields: submitted_form(&record.change, entity, &batch.match_by),
            truncated: false,
        };
        used += submitted.stored_size();
        kept.push(if used <= room {
            submitted
        } else {
            SubmittedRecord::dropped(record.index)
        });
    }
    kept
}

/// Whether `csv_cell` of `value` reads back as `value` in an upload
/// (`record::record_from_cells`), whatever its field's type. Not for: a text that an upload
/// takes for the clear marker or for an absent value, a list whose items hold `;` or
/// surrounding spaces (or an empty list), a list edit. A row holding one says so
/// (`KeptFields::KeptInNdjson`): its NDJSON line carries it exactly.
pub fn reads_back_from_csv(value: &Value) -> bool {
    match value {
        Value::String(text) => !text.is_empty() && text.trim() != crate::record::CLEAR_MARKER,
        Value::Array(items) => {
            !items.is_empty()
                && items.iter().all(|item| {
                    item.as_str().is_some_and(|item| {
                        !item.is_empty() && !item.contains(';') && item.trim() == item
                    })
                })
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
        Value::Object(_) => false,
    }
}

/// A cell of a CSV result file for a field's value: text as it is, `#N/A` for `null` (it
/// clears the field, as in an upload), a list's items joined by `;`, a number or boolean
/// as JSON writes it. A list edit has no CSV form: its JSON is written, to fix by hand.
pub fn csv_cell(value: &Value) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match value {
        Value::String(text) => Cow::Borrowed(text),
        Value::Null => Cow::Borrowed(crate::record::CLEAR_MARKER),
        Value::Array(items) if items.iter().all(Value::is_string) => Cow::Owned(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(";"),
        ),
        other => Cow::Owned(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
