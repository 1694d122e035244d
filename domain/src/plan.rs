//! Turning a submitted `data` array into batches of work.
//!
//! Rules, in order:
//! 1. every record is validated; an invalid one fails with its code;
//! 2. among valid records the first occurrence of a (normalised) email is kept and every
//!    later one is skipped with `duplicate_email`. Validation comes first so that a broken
//!    record never shadows a good one with the same email;
//! 3. kept records are cut, in input order, into batches of at most `batch_size`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::action::ActionType;
use crate::outcome::{OutcomeCode, RecordOutcome};
use crate::record::ContactChange;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRecord {
    pub index: u32,
    pub change: ContactChange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub number: u32,
    pub records: Vec<PlannedRecord>,
}

impl Batch {
    /// The same outcome for every record of the batch: a batch settled without being
    /// applied record by record (dead-lettered, or cancelled before it ran).
    pub fn outcomes_all(&self, code: OutcomeCode, message: &str) -> Vec<RecordOutcome> {
        self.records
            .iter()
            .map(|record| RecordOutcome {
                index: record.index,
                email: Some(record.change.email.as_str().to_owned()),
                code,
                message: Some(message.to_owned()),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionPlan {
    pub total_records: u32,
    pub batches: Vec<Batch>,
    /// Records that failed validation.
    pub rejected: Vec<RecordOutcome>,
    /// Later occurrences of an email.
    pub duplicates: Vec<RecordOutcome>,
}

/// `batch_size` is clamped to at least 1.
pub fn plan_action(records: &[Value], action_type: ActionType, batch_size: usize) -> ActionPlan {
    let batch_size = batch_size.max(1);
    let mut seen = HashSet::with_capacity(records.len());
    let mut kept = Vec::with_capacity(records.len());
    let mut rejected = Vec::new();
    let mut duplicates = Vec::new();

    for (position, record) in records.iter().enumerate() {
        let index = u32::try_from(position).unwrap_or(u32::MAX);
        match ContactChange::parse(record, action_type) {
            Err(error) => rejected.push(RecordOutcome {
                index,
                email: raw_email(record),
                code: error.code,
                message: Some(error.message),
            }),
            Ok(change) if !seen.insert(change.email.clone()) => duplicates.push(RecordOutcome {
                index,
                email: Some(change.email.as_str().to_owned()),
                code: OutcomeCode::DuplicateEmail,
                message: Some("an earlier record in this action has the same email".into()),
            }),
            Ok(change) => kept.push(PlannedRecord { index, change }),
        }
    }

    let batches = kept
        .chunks(batch_size)
        .zip(0u32..)
        .map(|(chunk, number)| Batch {
            number,
            records: chunk.to_vec(),
        })
        .collect();

    ActionPlan {
        total_records: u32::try_from(records.len()).unwrap_or(u32::MAX),
        batches,
        rejected,
        duplicates,
    }
}

/// For the log line of a rejected record: what the client sent as email, if it was text.
fn raw_email(record: &Value) -> Option<String> {
    record
        .get("email")
        .and_then(Value::as_str)
        .map(|raw| raw.chars().take(320).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn first_valid_occurrence_wins() {
        let records = vec![
            json!({"email": "A@x.io", "age": 999}),
            json!({"email": " a@X.io ", "name": "first valid"}),
            json!({"email": "a@x.io", "name": "dup"}),
            json!({"email": "b@x.io", "name": "b"}),
        ];
        let plan = plan_action(&records, ActionType::Upsert, 1);
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.rejected[0].index, 0);
        assert_eq!(plan.duplicates.len(), 1);
        assert_eq!(plan.duplicates[0].index, 2);
        assert_eq!(plan.duplicates[0].email.as_deref(), Some("a@x.io"));
        let kept: Vec<u32> = plan.batches.iter().map(|b| b.records[0].index).collect();
        assert_eq!(kept, vec![1, 3]);
        assert_eq!(plan.batches[1].number, 1);
    }

    fn arbitrary_record() -> impl Strategy<Value = Value> {
        let email = prop_oneof![
            "[a-c]{1,2}@[x-y]\\.io".prop_map(Value::from),
            "[A-C]{1,2}@[X-Y]\\.IO ".prop_map(Value::from),
            Just(Value::from("broken")),
            Just(Value::from(3)),
        ];
        (email, proptest::option::of(0i64..200)).prop_map(|(email, age)| {
            let mut record = json!({"email": email, "name": "n"});
            if let Some(age) = age {
                record["age"] = json!(age);
            }
            record
        })
    }

    proptest! {
        #[test]
        fn every_record_gets_exactly_one_place(
            records in proptest::collection::vec(arbitrary_record(), 0..200),
            batch_size in 1usize..50,
        ) {
            let plan = plan_action(&records, ActionType::Upsert, batch_size);
            let mut indexes: Vec<u32> = plan.rejected.iter().map(|o| o.index)
                .chain(plan.duplicates.iter().map(|o| o.index))
                .chain(plan.batches.iter().flat_map(|b| b.records.iter().map(|r| r.index)))
                .collect();
            indexes.sort_unstable();
            let expected: Vec<u32> = (0..records.len() as u32).collect();
            prop_assert_eq!(indexes, expected);

            let mut emails = HashSet::new();
            for batch in &plan.batches {
                prop_assert!(!batch.records.is_empty() && batch.records.len() <= batch_size);
                for record in &batch.records {
                    prop_assert!(emails.insert(record.change.email.clone()), "email kept twice");
                }
            }
            for duplicate in &plan.duplicates {
                let email = duplicate.email.clone().unwrap_or_default();
                let first = plan.batches.iter().flat_map(|b| &b.records)
                    .find(|r| r.change.email.as_str() == email);
                prop_assert!(first.is_some_and(|r| r.index < duplicate.index));
            }
        }
    }
}
