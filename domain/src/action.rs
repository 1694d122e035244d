//! What a bulk action is about and where it stands.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ActionType {
    /// Change existing records; a missing one fails with `not_found`.
    Update,
    /// Create or update.
    Upsert,
    /// Insert; an existing one is skipped with `already_exists`.
    Create,
    /// Remove; a missing one fails with `not_found`.
    Delete,
}

impl ActionType {
    pub const ALL: [ActionType; 4] = [
        ActionType::Update,
        ActionType::Upsert,
        ActionType::Create,
        ActionType::Delete,
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ActionType::Update => "update",
            ActionType::Upsert => "upsert",
            ActionType::Create => "create",
            ActionType::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ActionStatus {
    /// Accepted with a start time in the future.
    Scheduled,
    /// Accepted and waiting for a consumer.
    Queued,
    /// A consumer has started applying batches.
    Running,
    /// Held on request: keeps its place, takes no budget, until resumed.
    Paused,
    /// A cancel was requested; batches already being applied finish, the rest become
    /// `unprocessed`.
    Cancelling,
    /// Every record has an outcome.
    Completed,
    /// The action could not be carried out at all.
    Failed,
    /// Stopped on request before every record had an outcome.
    Cancelled,
}

impl ActionStatus {
    pub const ALL: [ActionStatus; 8] = [
        ActionStatus::Scheduled,
        ActionStatus::Queued,
        ActionStatus::Running,
        ActionStatus::Paused,
        ActionStatus::Cancelling,
        ActionStatus::Completed,
        ActionStatus::Failed,
        ActionStatus::Cancelled,
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ActionStatus::Scheduled => "scheduled",
            ActionStatus::Queued => "queued",
            ActionStatus::Running => "running",
            ActionStatus::Paused => "paused",
            ActionStatus::Cancelling => "cancelling",
            ActionStatus::Completed => "completed",
            ActionStatus::Failed => "failed",
            ActionStatus::Cancelled => "cancelled",
        }
    }

    /// Waiting for or doing work, and neither paused nor being cancelled.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            ActionStatus::Scheduled | ActionStatus::Queued | ActionStatus::Running
        )
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ActionStatus::Completed | ActionStatus::Failed | ActionStatus::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip_and_match_serde() {
        for t in ActionType::ALL {
            assert_eq!(ActionType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        for s in ActionStatus::ALL {
            assert_eq!(ActionStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
