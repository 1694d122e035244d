//! The shapes of the view documents in MongoDB, shared by their writer (projector) and
//! their reader (api).

use domain::{ActionId, ActionView, OutcomeStatus, RecordOutcome};

use crate::event_store::RawEvent;
use serde::{Deserialize, Serialize};

/// An action view as stored: the domain view plus the projector's checkpoint, the stream
/// position of the last event folded in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredActionView {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(flatten)]
    pub view: ActionView,
    pub checkpoint: String,
}

/// The `lastSeq` of a stored view read as a plain document (a projection of a few fields):
/// an Int64, or an Int32 where the store narrowed it.
pub fn last_seq_of(view: &mongodb::bson::Document) -> Option<u64> {
    match view.get("lastSeq") {
        Some(mongodb::bson::Bson::Int64(seq)) => u64::try_from(*seq).ok(),
        Some(mongodb::bson::Bson::Int32(seq)) => u64::try_from(*seq).ok(),
        _ => None,
    }
}

impl StoredActionView {
    pub fn new(view: ActionView, checkpoint: String) -> Self {
        Self {
            id: view.action_id.to_string(),
            view,
            checkpoint,
        }
    }
}

/// The log lines of one event that settled records (a batch, or the records rejected or
/// skipped at submission), in one document: the bucket pattern. A million-record action is
/// about a thousand documents, not a million, which is what keeps projection from costing
/// as much as the action's own writes. `_id` is derived from the action and the event's
/// seq, so writing the same event twice is a duplicate-key no-op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredLogBucket {
    #[serde(rename = "_id")]
    pub id: String,
    pub action_id: String,
    pub account_id: String,
    /// Seq of the event the lines come from.
    pub seq: u64,
    /// Smallest and largest record index in `lines`; readers page by them.
    pub min_index: u32,
    pub max_index: u32,
    /// The distinct statuses in `lines`, for filtering by status.
    pub statuses: Vec<OutcomeStatus>,
    /// The lines by record index, as one JSON text of `[index, email, code, message]`
    /// arrays (the status follows from the code). Nothing queries inside a bucket, and one
    /// compact string costs the store a fraction of what a thousand sub-documents cost
    /// (FerretDB converts every field of every sub-document); see `lines()`.
    pub lines: String,
}

/// A line as stored in a bucket: index, email, code, message.
type CompactLine = (u32, Option<String>, domain::OutcomeCode, Option<String>);

fn compact(line: &LogLine) -> CompactLine {
    (
        line.index,
        line.email.clone(),
        line.code,
        line.message.clone(),
    )
}

/// What a line takes in a bucket's text, its separating comma included.
fn compact_len(line: &LogLine) -> usize {
    serde_json::to_string(&compact(line)).map_or(0, |text| text.len()) + 1
}

fn bounded_email(email: &str) -> String {
    domain::text::bounded(email, domain::text::RAW_EMAIL_MAX_BYTES)
}

fn bounded_message(message: &str) -> String {
    domain::text::bounded(message, domain::text::MESSAGE_MAX_BYTES)
}

/// One record's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub index: u32,
    pub email: Option<String>,
    pub status: OutcomeStatus,
    pub code: domain::OutcomeCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The most line text one bucket holds: an event's lines are split over as many buckets as
/// it takes, so no bucket approaches MongoDB's 16 MiB document limit (and a page of the
/// logs reads a few MiB at most), whatever the event carries.
pub const LOG_BUCKET_MAX_BYTES: usize = 1 << 20;

impl StoredLogBucket {
    /// The buckets of one event's lines, by record index: none for an event that settled
    /// no records, several when the lines outgrow `LOG_BUCKET_MAX_BYTES`. Each line's texts
    /// are bounded again here, for events written before the domain bounded them. The
    /// split depends only on the outcomes, so writing the same event twice gives the same
    /// `_id`s (the first bucket keeps the unsplit `_id`).
    pub fn for_event(
        action_id: ActionId,
        account_id: &str,
        seq: u64,
        outcomes: &[RecordOutcome],
    ) -> Vec<Self> {
        Self::split(action_id, account_id, seq, outcomes, LOG_BUCKET_MAX_BYTES)
    }

    /// `for_event` with buckets of at most `max_bytes` of line text (a single line over
    /// it gets a bucket of its own).
    fn split(
        action_id: ActionId,
        account_id: &str,
        seq: u64,
        outcomes: &[RecordOutcome],
        max_bytes: usize,
    ) -> Vec<Self> {
        let mut sorted: Vec<&RecordOutcome> = outcomes.iter().collect();
        sorted.sort_by_key(|outcome| outcome.index);
        let mut buckets = Vec::new();
        let mut part: Vec<LogLine> = Vec::new();
        // The text of `part`: its lines, a comma after each but the last, two brackets.
        let mut part_bytes = 1;
        for outcome in sorted {
            let line = LogLine {
                index: outcome.index,
                email: outcome.email.as_deref().map(bounded_email),
                status: outcome.status(),
                code: outcome.code,
                message: outcome.message.as_deref().map(bounded_message),
            };
            let line_bytes = compact_len(&line);
            if !part.is_empty() && part_bytes + line_bytes > max_bytes {
                let number = buckets.len();
                buckets.push(Self::of_lines(action_id, account_id, seq, number, &part));
                part.clear();
                part_bytes = 1;
            }
            part_bytes += line_bytes;
            part.push(line);
        }
        if !part.is_empty() {
            let number = buckets.len();
            buckets.push(Self::of_lines(action_id, account_id, seq, number, &part));
        }
        buckets
    }

    /// One bucket of lines already sorted by index (at least one).
    fn of_lines(
        action_id: ActionId,
        account_id: &str,
        seq: u64,
        number: usize,
        lines: &[LogLine],
    ) -> Self {
        let statuses = OutcomeStatus::ALL
            .into_iter()
            .filter(|status| lines.iter().any(|line| line.status == *status))
            .collect();
        let compact: Vec<CompactLine> = lines.iter().map(compact).collect();
        // Serialising tuples of strings and numbers cannot fail.
        let text = serde_json::to_string(&compact).unwrap_or_default();
        let id = match number {
            0 => format!("{action_id}:{seq:010}"),
            n => format!("{action_id}:{seq:010}:{n:06}"),
        };
        Self {
            id,
            action_id: action_id.to_string(),
            account_id: account_id.to_owned(),
            seq,
            min_index: lines.first().map_or(0, |line| line.index),
            max_index: lines.last().map_or(0, |line| line.index),
            statuses,
            lines: text,
        }
    }

    /// The lines, by record index.
    pub fn lines(&self) -> Result<Vec<LogLine>, serde_json::Error> {
        let compact: Vec<CompactLine> = serde_json::from_str(&self.lines)?;
        Ok(compact
            .into_iter()
            .map(|(index, email, code, message)| LogLine {
                index,
                email,
                status: code.status(),
                code,
                message,
            })
            .collect())
    }
}

/// One event of an action whose events left Redis (retention), stored as the stream held
/// it. `_id` is derived from the action and the seq, so archiving twice is a no-op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedEvent {
    #[serde(rename = "_id")]
    pub id: String,
    pub action_id: String,
    #[serde(flatten)]
    pub event: RawEvent,
}

impl ArchivedEvent {
    pub fn new(action: ActionId, event: RawEvent) -> Self {
        Self {
            id: format!("{action}:{:010}", event.seq),
            action_id: action.to_string(),
            event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::OutcomeCode;
    use proptest::prelude::*;

    fn outcome(index: u32, message_bytes: usize) -> RecordOutcome {
        RecordOutcome {
            index,
            email: Some(format!("r{index}@x.io")),
            code: OutcomeCode::UnknownField,
            message: Some("m".repeat(message_bytes)),
        }
    }

    #[test]
    fn an_old_event_with_a_huge_message_still_gives_a_small_bucket() {
        // Built field by field: what a build that did not bound messages stored.
        let huge = outcome(0, 17_000_000);
        let buckets =
            StoredLogBucket::for_event(ActionId::from_ulid(ulid::Ulid::new()), "acc", 2, &[huge]);
        assert_eq!(buckets.len(), 1);
        assert!(buckets[0].lines.len() <= domain::text::MESSAGE_MAX_BYTES + 100);
        let lines = buckets[0].lines().unwrap();
        assert!(lines[0].message.as_deref().unwrap().ends_with('…'));
    }

    #[test]
    fn a_large_event_is_split_into_buckets_under_the_cap() {
        let outcomes: Vec<RecordOutcome> = (0..10_000).map(|i| outcome(i, 500)).collect();
        let buckets =
            StoredLogBucket::for_event(ActionId::from_ulid(ulid::Ulid::new()), "acc", 3, &outcomes);
        assert!(buckets.len() > 1);
        assert!(buckets
            .iter()
            .all(|b| b.lines.len() <= LOG_BUCKET_MAX_BYTES));
        let lines: usize = buckets.iter().map(|b| b.lines().unwrap().len()).sum();
        assert_eq!(lines, outcomes.len());
    }

    proptest! {
        #[test]
        fn split_buckets_hold_every_line_once_in_order_with_disjoint_ranges(
            sizes in proptest::collection::vec(0usize..300, 0..60),
            max_bytes in 50usize..2_000,
            shuffle_seed in any::<u64>(),
        ) {
            let mut outcomes: Vec<RecordOutcome> = sizes.iter().enumerate()
                .map(|(i, size)| outcome(i as u32 * 2, *size))
                .collect();
            // Outcomes arrive in any order; lines come out by index.
            outcomes.sort_by_key(|o| (o.index as u64).wrapping_mul(shuffle_seed | 1) % 97);
            let action = ActionId::from_ulid(ulid::Ulid::new());
            let buckets = StoredLogBucket::split(action, "acc", 7, &outcomes, max_bytes);
            let again = StoredLogBucket::split(action, "acc", 7, &outcomes, max_bytes);
            prop_assert_eq!(&buckets, &again, "the split is deterministic");
            let mut seen = Vec::new();
            let mut ids = std::collections::HashSet::new();
            let mut previous_max: Option<u32> = None;
            for bucket in &buckets {
                let lines = bucket.lines().unwrap();
                prop_assert!(bucket.lines.len() <= max_bytes || lines.len() == 1);
                prop_assert!(previous_max.is_none_or(|max| bucket.min_index > max));
                prop_assert_eq!(bucket.min_index, lines[0].index);
                prop_assert_eq!(bucket.max_index, lines[lines.len() - 1].index);
                prop_assert!(ids.insert(bucket.id.clone()));
                previous_max = Some(bucket.max_index);
                seen.extend(lines.iter().map(|line| line.index));
            }
            let expected: Vec<u32> = (0..sizes.len() as u32).map(|i| i * 2).collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
