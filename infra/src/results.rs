//! The rows of an action's result files that did not succeed, as the projector stores them
//! and the api streams them (`bulk_action_result_buckets`).
//!
//! One document per (event, status), split like log buckets past `RESULT_BUCKET_MAX_BYTES`.
//! `_id` is `<action>:<status>:<smallest index, 10 digits>:<seq, 10 digits>`: derived from the
//! event, so projecting it twice inserts nothing new, and ordered so that a status' file is
//! one `_id` range scan (the only index FerretDB has) in order of each document's smallest
//! index. Documents overlap (a batch's failures interleave with records refused at
//! submission), so readers merge them by index (`merge`); at any index only a few overlap,
//! since each kind of event covers disjoint index ranges.
//!
//! Succeeded rows are not stored here: they come from the log buckets, which hold them
//! already (a clean import writes nothing more for its result files).

use std::collections::HashMap;

use domain::results::SubmittedRecord;
use domain::{ActionId, OutcomeCode, OutcomeStatus, RecordOutcome};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The most row text one document holds (a row with a 64 KiB record gets one to itself).
pub const RESULT_BUCKET_MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredResultBucket {
    #[serde(rename = "_id")]
    pub id: String,
    pub action_id: String,
    pub status: OutcomeStatus,
    pub seq: u64,
    pub min_index: u32,
    pub max_index: u32,
    /// The field names its rows' records hold, sorted: a CSV export learns its columns
    /// from these alone, without reading the rows twice. Stored as JSON text, like the
    /// rows: a name is whatever a tenant sent, control characters included, which a store
    /// may refuse in a string (PostgreSQL under FerretDB refuses NUL) but not escaped.
    #[serde(default, with = "json_text")]
    pub fields: Vec<String>,
    /// JSON text of `[index, key, code, message, fields | null, truncated]` arrays by index:
    /// one string costs the store far less than sub-documents (see `StoredLogBucket`).
    pub rows: String,
}

/// One row of a result file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub index: u32,
    pub key: Option<String>,
    pub code: OutcomeCode,
    pub message: Option<String>,
    /// The record as submitted; `None` when nothing was kept (a succeeded record, an event
    /// before schema version 4).
    pub record: Option<SubmittedRecord>,
}

impl ResultRow {
    pub fn status(&self) -> OutcomeStatus {
        self.code.status()
    }
}

type CompactRow = (
    u32,
    Option<String>,
    OutcomeCode,
    Option<String>,
    Option<Map<String, Value>>,
    bool,
);

fn compact(row: &ResultRow) -> CompactRow {
    (
        row.index,
        row.key.clone(),
        row.code,
        row.message.clone(),
        row.record.as_ref().map(|record| record.fields.clone()),
        row.record.as_ref().is_some_and(|record| record.truncated),
    )
}

fn expand(row: CompactRow) -> ResultRow {
    let (index, key, code, message, fields, truncated) = row;
    ResultRow {
        index,
        key,
        code,
        message,
        record: fields.map(|fields| SubmittedRecord {
            index,
            fields,
            truncated,
        }),
    }
}

impl StoredResultBucket {
    /// The documents of one event's rows that did not succeed, by status then index.
    pub fn for_event(
        action: ActionId,
        seq: u64,
        outcomes: &[RecordOutcome],
        submitted: &[SubmittedRecord],
    ) -> Vec<Self> {
        Self::split(action, seq, outcomes, submitted, RESULT_BUCKET_MAX_BYTES)
    }

    fn split(
        action: ActionId,
        seq: u64,
        outcomes: &[RecordOutcome],
        submitted: &[SubmittedRecord],
        max_bytes: usize,
    ) -> Vec<Self> {
        let records: HashMap<u32, &SubmittedRecord> = submitted
            .iter()
            .map(|record| (record.index, record))
            .collect();
        let mut rows: Vec<ResultRow> = outcomes
            .iter()
            .filter(|outcome| outcome.status() != OutcomeStatus::Succeeded)
            .map(|outcome| ResultRow {
                index: outcome.index,
                key: outcome.email.clone(),
                code: outcome.code,
                message: outcome.message.clone(),
                record: records.get(&outcome.index).map(|record| (*record).clone()),
            })
            .collect();
        rows.sort_by_key(|row| (status_rank(row.status()), row.index));
        let mut buckets = Vec::new();
        let mut part: Vec<CompactRow> = Vec::new();
        let mut part_status = None;
        let mut part_bytes = 1;
        for row in &rows {
            let compacted = compact(row);
            let row_bytes = serde_json::to_string(&compacted).map_or(0, |text| text.len()) + 1;
            let status = row.status();
            let full = part_bytes + row_bytes > max_bytes || part_status != Some(status);
            if !part.is_empty() && full {
                buckets.extend(part_status.map(|status| Self::of(action, seq, status, &part)));
                part.clear();
                part_bytes = 1;
            }
            part_status = Some(status);
            part_bytes += row_bytes;
            part.push(compacted);
        }
        if !part.is_empty() {
            buckets.extend(part_status.map(|status| Self::of(action, seq, status, &part)));
        }
        buckets
    }

    fn of(action: ActionId, seq: u64, status: OutcomeStatus, rows: &[CompactRow]) -> Self {
        let min_index = rows.first().map_or(0, |row| row.0);
        Self {
            id: format!("{}{min_index:010}:{seq:010}", id_prefix(action, status)),
            action_id: action.to_string(),
            status,
            seq,
            min_index,
            max_index: rows.last().map_or(0, |row| row.0),
            fields: rows
                .iter()
                .filter_map(|row| row.4.as_ref())
                .flat_map(|fields| fields.keys().cloned())
                .collect::<std::collections::BTreeSet<String>>()
                .into_iter()
                .collect(),
            // Tuples of strings, numbers and JSON values always serialise.
            rows: serde_json::to_string(rows).unwrap_or_default(),
        }
    }

    /// The rows, by index.
    pub fn rows(&self) -> Result<Vec<ResultRow>, serde_json::Error> {
        let compact: Vec<CompactRow> = serde_json::from_str(&self.rows)?;
        Ok(compact.into_iter().map(expand).collect())
    }
}

fn status_rank(status: OutcomeStatus) -> usize {
    OutcomeStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or(0)
}

/// Every `_id` of `action`'s `status` file starts with this, and only those.
pub fn id_prefix(action: ActionId, status: OutcomeStatus) -> String {
    format!("{action}:{}:", status.as_str())
}

/// The exclusive upper bound of the ids starting with `prefix` (which ends in `:`).
pub fn id_prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_owned();
    end.pop();
    end.push(';');
    end
}

/// Merges documents that arrive in order of their smallest index into rows by index,
/// holding only the documents whose range reaches the rows not yet handed out.
#[derive(Default)]
pub struct Merge {
    pending: std::collections::BinaryHeap<std::cmp::Reverse<Pending>>,
    /// The smallest index of the last document pushed: no later one starts below it.
    floor: Option<u32>,
}

struct Pending(ResultRow);

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.0.index == other.0.index
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.index.cmp(&other.0.index)
    }
}

impl Merge {
    /// Adds the rows of the next document, whose smallest index is `min_index` (at least
    /// that of every document pushed before).
    pub fn push(&mut self, min_index: u32, rows: Vec<ResultRow>) {
        self.floor = Some(min_index);
        self.pending
            .extend(rows.into_iter().map(|row| std::cmp::Reverse(Pending(row))));
    }

    /// The rows no later document can precede: those below the last document's smallest
    /// index, by index.
    pub fn ready(&mut self) -> Vec<ResultRow> {
        let mut out = Vec::new();
        while let Some(std::cmp::Reverse(next)) = self.pending.peek() {
            if self.floor.is_some_and(|floor| next.0.index >= floor) {
                break;
            }
            if let Some(std::cmp::Reverse(Pending(row))) = self.pending.pop() {
                out.push(row);
            }
        }
        out
    }

    /// Every row left, by index: no document follows.
    pub fn finish(mut self) -> Vec<ResultRow> {
        self.floor = None;
        self.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outcome(index: u32, code: OutcomeCode) -> RecordOutcome {
        RecordOutcome::new(index, Some(format!("r{index}@x.io")), code, Some("m"))
    }

    #[test]
    fn rows_are_split_by_status_and_keep_their_records() {
        let action = ActionId::from_ulid(ulid::Ulid::new());
        let outcomes = vec![
            outcome(3, OutcomeCode::NotFound),
            outcome(1, OutcomeCode::Updated),
            outcome(2, OutcomeCode::AlreadyExists),
            outcome(0, OutcomeCode::NotFound),
        ];
        let record = SubmittedRecord::raw(3, &serde_json::json!({"email": "r3@x.io", "age": 3}));
        let buckets =
            StoredResultBucket::for_event(action, 9, &outcomes, std::slice::from_ref(&record));
        assert_eq!(buckets.len(), 2);
        assert_eq!(buckets[0].status, OutcomeStatus::Failed);
        assert_eq!(
            buckets[0].id,
            format!("{action}:failed:0000000000:0000000009")
        );
        let rows = buckets[0].rows().unwrap();
        assert_eq!(rows.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(rows[0].record, None);
        assert_eq!(rows[1].record, Some(record));
        assert_eq!(buckets[0].fields, ["age", "email"]);
        assert_eq!(buckets[1].status, OutcomeStatus::Skipped);
        assert!(buckets[1]
            .id
            .starts_with(&id_prefix(action, OutcomeStatus::Skipped)));
        assert!(buckets[1].id < id_prefix_end(&id_prefix(action, OutcomeStatus::Skipped)));
    }

    proptest! {
        /// Documents of any sizes and overlaps, read in `_id` order, merge into every row
        /// once, by index.
        #[test]
        fn documents_read_in_id_order_merge_into_rows_by_index(
            events in proptest::collection::vec(proptest::collection::vec(0u32..500, 1..40), 1..8),
            max_bytes in 40usize..3_000,
        ) {
            let action = ActionId::from_ulid(ulid::Ulid::new());
            let mut used = std::collections::HashSet::new();
            let mut buckets = Vec::new();
            for (seq, indexes) in events.iter().enumerate() {
                let outcomes: Vec<RecordOutcome> = indexes
                    .iter()
                    .filter(|index| used.insert(**index))
                    .map(|index| outcome(*index, OutcomeCode::NotFound))
                    .collect();
                buckets.extend(StoredResultBucket::split(action, seq as u64 + 1, &outcomes, &[], max_bytes));
            }
            buckets.sort_by(|a, b| a.id.cmp(&b.id));
            let mut merge = Merge::default();
            let mut out = Vec::new();
            for bucket in &buckets {
                merge.push(bucket.min_index, bucket.rows().unwrap());
                out.extend(merge.ready().into_iter().map(|row| row.index));
            }
            out.extend(merge.finish().into_iter().map(|row| row.index));
            let mut expected: Vec<u32> = used.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(out, expected);
        }
    }
}

/// A list of strings stored as its JSON text.
mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(names: &[String], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&serde_json::to_string(names).unwrap_or_else(|_| "[]".into()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<String>, D::Error> {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}
