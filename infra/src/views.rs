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

impl StoredLogBucket {
    /// `None` for an event that settled no records.
    pub fn new(
        action_id: ActionId,
        account_id: &str,
        seq: u64,
        outcomes: &[RecordOutcome],
    ) -> Option<Self> {
        let mut lines: Vec<LogLine> = outcomes
            .iter()
            .map(|outcome| LogLine {
                index: outcome.index,
                email: outcome.email.clone(),
                status: outcome.status(),
                code: outcome.code,
                message: outcome.message.clone(),
            })
            .collect();
        lines.sort_by_key(|line| line.index);
        let min_index = lines.first()?.index;
        let max_index = lines.last()?.index;
        let statuses = OutcomeStatus::ALL
            .into_iter()
            .filter(|status| lines.iter().any(|line| line.status == *status))
            .collect();
        let compact: Vec<CompactLine> = lines
            .iter()
            .map(|line| {
                (
                    line.index,
                    line.email.clone(),
                    line.code,
                    line.message.clone(),
                )
            })
            .collect();
        // Serialising tuples of strings and numbers cannot fail.
        let lines = serde_json::to_string(&compact).unwrap_or_default();
        Some(Self {
            id: format!("{action_id}:{seq:010}"),
            action_id: action_id.to_string(),
            account_id: account_id.to_owned(),
            seq,
            min_index,
            max_index,
            statuses,
            lines,
        })
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
