//! What a batch's earlier attempts left in the store, read before it is dead-lettered.
//!
//! An attempt may have written part of a batch before it failed or its consumer died
//! (crashes count as attempts). Dead-lettering reports every record `dead_lettered`, which
//! says the store holds nothing of its change; so first each record is looked up, and one
//! whose change is in effect is reported as applied instead:
//! - create: the document carries this action's `createdByBulkAction` → `created`;
//! - upsert: that, or the document's fields the record names are the record's → `updated`;
//! - update: the document's fields the record names are the record's → `updated`;
//! - delete: the first attempt found the document (its remembered found set) and it is gone
//!   → `deleted`.
//!
//! A `$set` (with its `$unset`) writes a document's fields at once, so "the fields are the
//! record's" cannot be half true; a document that already had those values is `updated`
//! too, which is what an applied update reports for it.

use std::collections::{HashMap, HashSet};

use domain::fields::FieldChange;
use domain::{ActionType, Batch, OutcomeCode, PlannedRecord, RecordOutcome};
use mongodb::bson::{doc, Bson, Document};

use crate::apply::{ApplyError, BatchMemory, DocumentWriter, Scope, Target, CREATED_BY};

impl DocumentWriter {
    /// `dead_lettered` with each record already in effect replaced by its applied outcome.
    pub async fn reconcile(
        &self,
        target: Target<'_>,
        batch: &Batch,
        dead_lettered: Vec<RecordOutcome>,
        memory: &impl BatchMemory,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        let scope = Scope::of(&target, &batch.match_by);
        let stored = self.stored_documents(&scope, batch).await?;
        let deleted: HashSet<String> = match target.action_type {
            ActionType::Delete => {
                let mut present: Vec<String> = stored.keys().cloned().collect();
                present.sort_unstable();
                let found_first = memory.found_once(present).await?;
                // What it marked and did not delete stays as it was before the batch.
                self.unmark(&target, &scope, batch).await?;
                found_first
                    .into_iter()
                    .filter(|key| !stored.contains_key(key))
                    .collect()
            }
            _ => HashSet::new(),
        };
        let applied = |record: &PlannedRecord| -> Option<OutcomeCode> {
            let key = record.key();
            let document = stored.get(key);
            let ours = document.is_some_and(|d| {
                d.get_str(CREATED_BY).ok() == Some(target.action.to_string().as_str())
            });
            let same = document.is_some_and(|d| fields_are(d, record));
            match target.action_type {
                ActionType::Create | ActionType::Upsert if ours => Some(OutcomeCode::Created),
                ActionType::Upsert | ActionType::Update if same => Some(OutcomeCode::Updated),
                ActionType::Delete if deleted.contains(key) => Some(OutcomeCode::Deleted),
                _ => None,
            }
        };
        let by_index: HashMap<u32, OutcomeCode> = batch
            .records
            .iter()
            .filter_map(|record| applied(record).map(|code| (record.index, code)))
            .collect();
        Ok(dead_lettered
            .into_iter()
            .map(|outcome| match by_index.get(&outcome.index) {
                Some(code) => RecordOutcome::new(outcome.index, outcome.email, *code, None),
                None => outcome,
            })
            .collect())
    }

    /// The batch's documents in the account, by key, in one reply.
    async fn stored_documents(
        &self,
        scope: &Scope<'_>,
        batch: &Batch,
    ) -> Result<HashMap<String, Document>, ApplyError> {
        let mut projection = doc! { CREATED_BY: 1 };
        for record in &batch.records {
            for name in record.change.fields.keys() {
                projection.insert(name, 1);
            }
        }
        let records: Vec<&PlannedRecord> = batch.records.iter().collect();
        self.documents_by_key(scope, &records, projection).await
    }
}

/// Whether every field the record names is as the record leaves it in `document`: its
/// value where it sets one, absent where it clears it.
fn fields_are(document: &Document, record: &PlannedRecord) -> bool {
    record
        .change
        .fields
        .iter()
        .all(|(name, change)| match change {
            FieldChange::Set(value) => same(document.get(name), &crate::apply::bson(value)),
            FieldChange::Clear => !document.contains_key(name),
            // A list edited: the stored list holds every add and none of the removals; a list
            // only taken from may also be absent. Anything else there was never edited.
            FieldChange::Edit { add, remove } => match document.get(name) {
                Some(Bson::Array(items)) => {
                    let items: Vec<&str> = items.iter().filter_map(Bson::as_str).collect();
                    add.iter().all(|item| items.contains(&item.as_str()))
                        && remove.iter().all(|item| !items.contains(&item.as_str()))
                }
                None => add.is_empty(),
                Some(_) => false,
            },
        })
}

/// A stored value is the one wanted; whole numbers match whatever width they were stored in.
fn same(stored: Option<&Bson>, wanted: &Bson) -> bool {
    let number = |value: &Bson| match value {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    };
    match (stored, number(wanted)) {
        (Some(stored), Some(wanted)) => number(stored) == Some(wanted),
        (Some(stored), None) => stored == wanted,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{RecordChange, RecordRules};

    fn record(fields: serde_json::Value) -> PlannedRecord {
        let mut value = fields;
        value["email"] = serde_json::json!("a@b.co");
        let rules = RecordRules::contacts(ActionType::Update);
        PlannedRecord {
            index: 0,
            change: RecordChange::parse(&value, &rules).unwrap(),
        }
    }

    #[test]
    fn a_contact_has_the_records_fields_when_each_set_field_matches() {
        let contact = doc! { "email": "a@b.co", "name": "Ann", "age": 41_i32, "status": "lead" };
        let same = |fields| fields_are(&contact, &record(fields));
        assert!(same(serde_json::json!({ "name": "Ann" })));
        assert!(same(serde_json::json!({ "age": 41, "status": "lead" })));
        assert!(!same(serde_json::json!({ "name": "Bob" })));
        assert!(!same(serde_json::json!({ "name": "Ann", "age": 40 })));
        let wide = doc! { "age": 41_i64 };
        assert!(fields_are(&wide, &record(serde_json::json!({ "age": 41 }))));
        assert!(!fields_are(
            &doc! {},
            &record(serde_json::json!({ "status": "lead" }))
        ));
    }
}
