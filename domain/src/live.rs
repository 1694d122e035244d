//! What a live progress stream tells a client about an action's events.
//!
//! The api folds an action's events as they arrive and sends three kinds of message: the
//! whole view (`snapshot`), its counts (`progress`), and one message per change of status,
//! named here. Which events are changes of status, and their names, is a rule of the
//! domain: the api's live fan-out and its replay for a resuming client must agree on it.

use serde::Serialize;

use crate::action::ActionStatus;
use crate::event::EventPayload;
use crate::ids::ActionId;
use crate::time::Timestamp;
use crate::view::ActionView;

/// The name of the message a status-changing event becomes, or `None` for an event that
/// only moves counts. `Completed` is named by the status the action ended in, which only
/// the fold knows: `final_status` is the view's status once the event is folded.
pub fn status_change(payload: &EventPayload, final_status: ActionStatus) -> Option<&'static str> {
    Some(match payload {
        EventPayload::Released {} => "released",
        EventPayload::Started {} => "started",
        EventPayload::Paused { .. } => "paused",
        EventPayload::Resumed { .. } => "resumed",
        EventPayload::CancelRequested { .. } => "cancelling",
        EventPayload::Rescheduled { .. } => "rescheduled",
        EventPayload::PacingChanged { .. } => "pacingChanged",
        EventPayload::Completed {} => final_message(final_status)?,
        EventPayload::Created { .. }
        | EventPayload::RecordRejected { .. }
        | EventPayload::RecordSkipped { .. }
        | EventPayload::BatchProcessed { .. }
        | EventPayload::BatchDeadLettered { .. }
        | EventPayload::BatchCancelled { .. }
        // A retry is another action; this one's status stays as it is.
        | EventPayload::RetryCreated { .. } => return None,
    })
}

/// The last message of a finished action's stream: `completed`, `failed` or `cancelled`.
pub fn final_message(status: ActionStatus) -> Option<&'static str> {
    match status {
        ActionStatus::Completed => Some("completed"),
        ActionStatus::Failed => Some("failed"),
        ActionStatus::Cancelled => Some("cancelled"),
        ActionStatus::Scheduled
        | ActionStatus::Queued
        | ActionStatus::Running
        | ActionStatus::Paused
        | ActionStatus::Cancelling => None,
    }
}

/// The status an action has right after a change of that name, when the name alone tells
/// (`pacingChanged` does not change it).
pub fn status_after(change: &str) -> Option<ActionStatus> {
    Some(match change {
        "released" => ActionStatus::Queued,
        "started" | "resumed" => ActionStatus::Running,
        "paused" => ActionStatus::Paused,
        "cancelling" => ActionStatus::Cancelling,
        "rescheduled" => ActionStatus::Scheduled,
        _ => final_status(change)?,
    })
}

fn final_status(name: &str) -> Option<ActionStatus> {
    match name {
        "completed" => Some(ActionStatus::Completed),
        "failed" => Some(ActionStatus::Failed),
        "cancelled" => Some(ActionStatus::Cancelled),
        _ => None,
    }
}

/// The data of a `progress` message: the view's counts, cheap to send twice a second
/// to a thousand subscribers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    pub action_id: ActionId,
    pub status: ActionStatus,
    pub total_records: u32,
    pub processed_records: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    pub unprocessed: u32,
    /// processedRecords / totalRecords, 0.0 to 1.0.
    pub progress: f64,
    /// Records settled by batches per second since the start; null before it.
    pub records_per_second: Option<f64>,
    pub last_seq: u64,
    /// When the last event folded into these counts happened (a batch settling, by the
    /// clock of the process that settled it): how fresh the counts are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<Timestamp>,
}

impl Progress {
    pub fn of(view: &ActionView, last_event_at: Option<Timestamp>, now: Timestamp) -> Self {
        Self {
            action_id: view.action_id,
            status: view.status,
            total_records: view.total_records,
            processed_records: view.processed_records,
            succeeded: view.succeeded,
            failed: view.failed,
            skipped: view.skipped,
            unprocessed: view.unprocessed,
            progress: view.progress,
            records_per_second: view.stats(now).records_per_second,
            last_seq: view.last_seq,
            last_event_at,
        }
    }
}

/// The data of a status change message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusChange {
    /// Present when `counts` is not (the counts carry it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<ActionId>,
    /// The message's name again (`started`, `paused`, ...), for clients that read one
    /// handler's data.
    pub change: String,
    pub seq: u64,
    pub occurred_at: Timestamp,
    /// The counts once the change is folded. Absent on a change a resuming client is sent
    /// from the stream: the counts come in the `progress` after it.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Progress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_is_named_by_the_status_the_action_ended_in() {
        let completed = EventPayload::Completed {};
        assert_eq!(
            status_change(&completed, ActionStatus::Cancelled),
            Some("cancelled")
        );
        assert_eq!(
            status_change(&completed, ActionStatus::Completed),
            Some("completed")
        );
        assert_eq!(
            status_change(&completed, ActionStatus::Failed),
            Some("failed")
        );
        // A fold that did not finish the action names no final message.
        assert_eq!(status_change(&completed, ActionStatus::Running), None);
    }

    #[test]
    fn a_change_names_the_status_it_leaves_the_action_in() {
        for status in ActionStatus::ALL {
            if let Some(name) = final_message(status) {
                assert_eq!(status_after(name), Some(status));
            }
        }
        assert_eq!(status_after("paused"), Some(ActionStatus::Paused));
        assert_eq!(status_after("pacingChanged"), None);
    }

    #[test]
    fn batches_move_counts_and_are_not_changes_of_status() {
        let batch = EventPayload::BatchCancelled {
            submitted: Vec::new(),
            batch: 0,
            outcomes: Vec::new(),
        };
        assert_eq!(status_change(&batch, ActionStatus::Cancelling), None);
        assert_eq!(
            status_change(&EventPayload::Started {}, ActionStatus::Running),
            Some("started")
        );
        assert_eq!(
            status_change(
                &EventPayload::CancelRequested { api_key_id: None },
                ActionStatus::Cancelling
            ),
            Some("cancelling")
        );
    }
}
