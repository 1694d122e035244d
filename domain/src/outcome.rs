//! The outcome of one input record: every record ends in exactly one of these.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OutcomeStatus {
    Succeeded,
    Failed,
    Skipped,
    /// Never attempted: the action was cancelled first.
    Unprocessed,
}

impl OutcomeStatus {
    pub const ALL: [OutcomeStatus; 4] = [
        OutcomeStatus::Succeeded,
        OutcomeStatus::Failed,
        OutcomeStatus::Skipped,
        OutcomeStatus::Unprocessed,
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            OutcomeStatus::Succeeded => "succeeded",
            OutcomeStatus::Failed => "failed",
            OutcomeStatus::Skipped => "skipped",
            OutcomeStatus::Unprocessed => "unprocessed",
        }
    }
}

/// Machine-readable reason codes. Clients switch on these; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OutcomeCode {
    // succeeded
    Created,
    Updated,
    Deleted,
    // skipped: an earlier record of the action has the same key (named in the code)
    DuplicateEmail,
    DuplicateDomain,
    DuplicateId,
    DuplicateExternalId,
    AlreadyExists,
    // failed: the record itself
    NotAnObject,
    MissingEmail,
    InvalidEmail,
    /// The field the action matches by is absent or empty (`missing_email` for an email).
    MissingKey,
    /// The key is not of its kind: a domain that is not a host name, an id too long.
    InvalidKey,
    /// The record names the natural key of an action matched by another key, where it
    /// cannot change it.
    ImmutableField,
    InvalidType,
    InvalidValue,
    UnknownField,
    ForbiddenFieldName,
    /// A field name or text value holds a character the store refuses or that has no place
    /// in it: NUL and other control characters (tab, newline and carriage return are
    /// allowed in free-text values).
    InvalidCharacters,
    NoFieldsToUpdate,
    /// A retried record whose fields its original action did not keep (an action before
    /// result files, or a record too large to keep): there is nothing to submit again.
    FieldsNotKept,
    /// A line or row of a streamed upload that is not a record: not JSON, not UTF-8, or a
    /// CSV row with the wrong number of fields.
    MalformedRecord,
    /// A line or row of a streamed upload longer than the record size limit.
    RecordTooLarge,
    // failed: applying it
    NotFound,
    StoreError,
    /// The record's batch failed on every attempt and was moved to the dead-letter stream.
    /// Whether the store kept part of it is unknown: the batch is kept for re-driving.
    DeadLettered,
    // unprocessed
    /// The action was cancelled before this record's batch was applied; nothing was written.
    Unprocessed,
}

impl OutcomeCode {
    pub fn status(&self) -> OutcomeStatus {
        use OutcomeCode::*;
        match self {
            Created | Updated | Deleted => OutcomeStatus::Succeeded,
            DuplicateEmail | DuplicateDomain | DuplicateId | DuplicateExternalId
            | AlreadyExists => OutcomeStatus::Skipped,
            NotAnObject | MissingEmail | InvalidEmail | MissingKey | InvalidKey
            | ImmutableField | InvalidType | InvalidValue | UnknownField | ForbiddenFieldName
            | InvalidCharacters | NoFieldsToUpdate | FieldsNotKept | MalformedRecord
            | RecordTooLarge | NotFound | StoreError | DeadLettered => OutcomeStatus::Failed,
            Unprocessed => OutcomeStatus::Unprocessed,
        }
    }

    pub fn as_str(&self) -> &'static str {
        use OutcomeCode::*;
        match self {
            Created => "created",
            Updated => "updated",
            Deleted => "deleted",
            DuplicateEmail => "duplicate_email",
            DuplicateDomain => "duplicate_domain",
            DuplicateId => "duplicate_id",
            DuplicateExternalId => "duplicate_external_id",
            AlreadyExists => "already_exists",
            NotAnObject => "not_an_object",
            MissingEmail => "missing_email",
            InvalidEmail => "invalid_email",
            MissingKey => "missing_key",
            InvalidKey => "invalid_key",
            ImmutableField => "immutable_field",
            InvalidType => "invalid_type",
            InvalidValue => "invalid_value",
            UnknownField => "unknown_field",
            ForbiddenFieldName => "forbidden_field_name",
            InvalidCharacters => "invalid_characters",
            NoFieldsToUpdate => "no_fields_to_update",
            FieldsNotKept => "fields_not_kept",
            MalformedRecord => "malformed_record",
            RecordTooLarge => "record_too_large",
            NotFound => "not_found",
            StoreError => "store_error",
            DeadLettered => "dead_lettered",
            Unprocessed => "unprocessed",
        }
    }
}

impl fmt::Display for OutcomeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of an action's log. `index` is the record's position in the submitted `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordOutcome {
    pub index: u32,
    /// The record's key, normalised (the email, domain, id or external id its action
    /// matches by), or the raw value when it could not be read as one. Named `email` in
    /// stored events and views since contacts were the only entity.
    pub email: Option<String>,
    pub code: OutcomeCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl RecordOutcome {
    /// An outcome whose message is bounded (`text::MESSAGE_MAX_BYTES`), whatever it
    /// quotes: every log line, and so every settling event, stays small.
    pub fn new(
        index: u32,
        email: Option<String>,
        code: OutcomeCode,
        message: Option<&str>,
    ) -> Self {
        Self {
            index,
            email,
            code,
            message: message.map(|text| crate::text::bounded(text, crate::text::MESSAGE_MAX_BYTES)),
        }
    }

    pub fn status(&self) -> OutcomeStatus {
        self.code.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_text_matches_serde() {
        let code = OutcomeCode::DuplicateEmail;
        assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        assert_eq!(OutcomeCode::NotFound.status(), OutcomeStatus::Failed);
        assert_eq!(OutcomeCode::AlreadyExists.status(), OutcomeStatus::Skipped);
        assert_eq!(
            serde_json::to_value(OutcomeCode::InvalidCharacters).unwrap(),
            "invalid_characters"
        );
    }

    #[test]
    fn an_outcome_message_is_bounded_whatever_it_quotes() {
        let huge = format!("unknown field {}", "k".repeat(17_000_000));
        let outcome = RecordOutcome::new(0, None, OutcomeCode::UnknownField, Some(&huge));
        let message = outcome.message.unwrap();
        assert!(message.len() <= crate::text::MESSAGE_MAX_BYTES);
        assert!(message.starts_with("unknown field kkk") && message.ends_with('…'));
    }
}
