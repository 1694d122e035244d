//! The shapes of the view documents in MongoDB, shared by their writer (projector) and
//! their reader (api).

use domain::{ActionId, ActionView, OutcomeStatus, RecordOutcome};
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

/// One record's log line. `_id` is derived from the action and the record index, so writing
/// the same outcome twice is a duplicate-key no-op, not a second line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredLogEntry {
    #[serde(rename = "_id")]
    pub id: String,
    pub action_id: String,
    pub account_id: String,
    pub index: u32,
    pub email: Option<String>,
    pub status: OutcomeStatus,
    pub code: domain::OutcomeCode,
    pub message: Option<String>,
}

impl StoredLogEntry {
    pub fn new(action_id: ActionId, account_id: &str, outcome: &RecordOutcome) -> Self {
        Self {
            id: format!("{action_id}:{:010}", outcome.index),
            action_id: action_id.to_string(),
            account_id: account_id.to_owned(),
            index: outcome.index,
            email: outcome.email.clone(),
            status: outcome.status(),
            code: outcome.code,
            message: outcome.message.clone(),
        }
    }
}
