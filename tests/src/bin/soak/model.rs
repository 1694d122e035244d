//! What the soak submitted, and what the contacts must be as a result.
//!
//! The ledger keeps every accepted action with its records, in submission order. Actions
//! on one email range never overlap in time (a range gets its next action only once the
//! previous one is final), so folding each action's reported per-record outcomes in that
//! order gives every contact's expected final state: a record reported succeeded was
//! applied, any other record changed nothing.

use std::collections::BTreeMap;

use domain::{ActionType, FieldChange, FieldValue, RecordChange, RecordRules};
use serde_json::Value;

/// One accepted action.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: String,
    pub account: String,
    pub action_type: ActionType,
    pub format: &'static str,
    /// In submission order: the log line of index `i` is about `records[i]`.
    pub records: Vec<Value>,
    /// A small action of a well-behaved account with nothing that delays it on purpose
    /// (schedule, pace, pause, cancel, PATCH): its latency is held to the fair-share bound.
    pub fairness_candidate: bool,
    /// The kind of hostile input, for an action of the hostile account.
    pub hostile: Option<&'static str>,
}

/// Everything accepted, in submission order.
#[derive(Default)]
pub struct Ledger {
    pub actions: Vec<Submitted>,
}

impl Ledger {
    pub fn accept(&mut self, action: Submitted) {
        self.actions.push(action);
    }
}

/// A contact as the soak expects it.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    Absent,
    Present {
        name: Option<String>,
        age: Option<i64>,
        status: Option<String>,
        created_by: String,
    },
    /// The last record about it was dead-lettered: the platform does not know whether the
    /// store kept it, so neither does the soak (checked strictly, reported apart).
    DeadLettered {
        before: Box<Expected>,
        action: String,
    },
}

/// Expected state by (account, normalised email).
#[derive(Default)]
pub struct Contacts {
    pub by_email: BTreeMap<(String, String), Expected>,
}

/// A record's outcome that contradicts the contact's state before the action.
pub struct Contradiction {
    pub index: usize,
    pub email: String,
    pub code: String,
    pub expected: &'static str,
}

impl Contacts {
    fn get(&self, account: &str, email: &str) -> Expected {
        self.by_email
            .get(&(account.to_owned(), email.to_owned()))
            .cloned()
            .unwrap_or(Expected::Absent)
    }

    /// Folds one final action's outcomes (`codes[i]` for record `i`) into the expected
    /// contacts; returns the outcomes the state before the action rules out.
    pub fn fold(&mut self, action: &Submitted, codes: &[String]) -> Vec<Contradiction> {
        let mut contradictions = Vec::new();
        for (index, (record, code)) in action.records.iter().zip(codes).enumerate() {
            let Ok(change) =
                RecordChange::parse(record, &RecordRules::contacts(action.action_type))
            else {
                if matches!(code.as_str(), "created" | "updated" | "deleted") {
                    contradictions.push(Contradiction {
                        index,
                        email: record["email"].to_string(),
                        code: code.clone(),
                        expected: "a validation failure",
                    });
                }
                continue;
            };
            let email = change.key.clone();
            let before = self.get(&action.account, &email);
            let exists = match &before {
                Expected::Absent => Some(false),
                Expected::Present { .. } => Some(true),
                Expected::DeadLettered { .. } => None,
            };
            if let Some(expected) = expected_code(action.action_type, exists, code) {
                contradictions.push(Contradiction {
                    index,
                    email: email.clone(),
                    code: code.clone(),
                    expected,
                });
            }
            let after = match code.as_str() {
                "created" => created(&change, &action.id),
                "updated" => updated(before, &change),
                "deleted" => Expected::Absent,
                "dead_lettered" => Expected::DeadLettered {
                    before: Box::new(before),
                    action: action.id.clone(),
                },
                _ => continue,
            };
            self.by_email.insert((action.account.clone(), email), after);
        }
        contradictions
    }
}

/// The code a store-level outcome should have had, when `code` is not it. Validation,
/// duplicates, cancels and dead letters are not about the contact's state.
fn expected_code(
    action_type: ActionType,
    exists: Option<bool>,
    code: &str,
) -> Option<&'static str> {
    let exists = exists?;
    if !matches!(
        code,
        "created" | "updated" | "deleted" | "not_found" | "already_exists"
    ) {
        return None;
    }
    let expected = match (action_type, exists) {
        (ActionType::Create, false) | (ActionType::Upsert, false) => "created",
        (ActionType::Create, true) => "already_exists",
        (ActionType::Upsert, true) | (ActionType::Update, true) => "updated",
        (ActionType::Update, false) | (ActionType::Delete, false) => "not_found",
        (ActionType::Delete, true) => "deleted",
    };
    (code != expected).then_some(expected)
}

fn created(change: &RecordChange, action: &str) -> Expected {
    Expected::Present {
        name: text_after(change, "name", None),
        age: integer_after(change, "age", None),
        status: text_after(change, "status", None),
        created_by: action.to_owned(),
    }
}

/// A field after a record's change: its value, nothing once cleared, as it was if unnamed.
fn text_after(change: &RecordChange, field: &str, before: Option<String>) -> Option<String> {
    match change.fields.get(field) {
        None => before,
        Some(FieldChange::Set(FieldValue::Text(text))) => Some(text.clone()),
        Some(_) => None,
    }
}

fn integer_after(change: &RecordChange, field: &str, before: Option<i64>) -> Option<i64> {
    match change.fields.get(field) {
        None => before,
        Some(FieldChange::Set(FieldValue::Integer(integer))) => Some(*integer),
        Some(_) => None,
    }
}

fn updated(before: Expected, change: &RecordChange) -> Expected {
    match before {
        Expected::Present {
            name,
            age,
            status,
            created_by,
        } => Expected::Present {
            name: text_after(change, "name", name),
            age: integer_after(change, "age", age),
            status: text_after(change, "status", status),
            created_by,
        },
        // Reported applied to a contact the soak did not expect (`expected_code` reported
        // that): an upsert that wrote it, e.g. an insert re-sent after an outage. Carry on
        // from what the record says, so one wrong code is not also a wrong contact.
        Expected::Absent => Expected::Present {
            name: text_after(change, "name", None),
            age: integer_after(change, "age", None),
            status: text_after(change, "status", None),
            created_by: String::new(),
        },
        other => other,
    }
}
