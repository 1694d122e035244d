//! The parts of the API's answers the CLI reads for its own output. Every field is
//! optional with a default: a newer API adding or renaming fields must not break `--json`
//! passthrough or the progress display, which is why these are not the domain crate's
//! types (the CLI uses only the public API).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The counts an action view, a `progress` message or a change of status carries.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Counts {
    pub action_id: String,
    pub status: String,
    pub total_records: u64,
    pub processed_records: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub unprocessed: u64,
    pub records_per_second: Option<f64>,
}

/// `GET /bulk-actions/{id}/stats`, also the data of a stream's final message.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Stats {
    pub action_id: String,
    pub status: String,
    pub total: u64,
    pub processed: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub unprocessed: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub duration_ms: Option<i64>,
    pub records_per_second: Option<f64>,
}

/// The action view, for `status` and `list`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct View {
    #[serde(flatten)]
    pub counts: Counts,
    pub entity_type: String,
    pub action_type: String,
    pub created_at: String,
    pub scheduled_for: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub retry_of: Option<String>,
    pub by_reason: BTreeMap<String, u64>,
}

pub fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// The status a change of that name leaves the action in, when the name tells.
pub fn status_after(change: &str) -> Option<&'static str> {
    Some(match change {
        "released" => "queued",
        "started" | "resumed" => "running",
        "paused" => "paused",
        "cancelling" => "cancelling",
        "rescheduled" => "scheduled",
        _ => return None,
    })
}
