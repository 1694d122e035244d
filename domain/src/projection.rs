//! Why an action's views could not be projected.
//!
//! Not derived from events: the projector records it when a write of this action's views
//! fails in a way retrying will not cure, and quarantines the action so that it does not
//! hold up every other action. `projector replay` tries again and clears it.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Longest `message` kept, in characters: a store's error can quote the whole document.
pub const PROJECTION_MESSAGE_MAX_CHARS: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectionError {
    /// `store_refused`, `events_unreadable`, `events_do_not_fold` or
    /// `view_not_serializable`.
    pub code: String,
    /// What the store or the fold said, cut to 512 characters.
    pub message: String,
    /// When the action was quarantined.
    pub at: Timestamp,
    /// The first event that could not be projected; the views hold the events before it.
    pub seq: u64,
}

impl ProjectionError {
    pub fn new(code: &str, message: &str, at: Timestamp, seq: u64) -> Self {
        Self {
            code: code.to_owned(),
            message: message.chars().take(PROJECTION_MESSAGE_MAX_CHARS).collect(),
            at,
            seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let at = Timestamp::from_millis(0).unwrap();
        let error = ProjectionError::new("store_refused", &"é".repeat(2_000), at, 7);
        assert_eq!(error.message.chars().count(), PROJECTION_MESSAGE_MAX_CHARS);
        let short = ProjectionError::new("store_refused", "too large", at, 7);
        assert_eq!(short.message, "too large");
    }
}
