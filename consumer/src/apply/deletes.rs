//! A batch's deletes: mark, find what is marked, remember it, delete it.
//!
//! Every attempt must report what the first one deleted, and a deleted document leaves no
//! trace: so the batch's found set is remembered in Redis (`BatchMemory::found_once`)
//! before anything is deleted, and each attempt deletes and reports exactly that set.
//!
//! The found set is learnt by marking: one update statement per record sets
//! `deletingByBulkAction: <action>:<batch>` on its document (its only write besides the
//! delete), then one `find` of the batch's keys *and that mark* returns the documents that
//! exist, and one `delete` with the same filter removes them. On MongoDB each step uses the
//! key's index. On FerretDB, which filters `$in` outside PostgreSQL after reading every
//! document the other conditions let through, the mark's equality lets through only the
//! batch's documents: the find and the delete cost one scan each, where a find by `$in`
//! alone read the whole account (a delete by id at a fifth of a raw client's rate,
//! measured; docs/benchmarks.md). A mark left by a batch that was dead-lettered before it
//! deleted is removed when the batch is reconciled.

use std::collections::HashSet;

use domain::{Batch, OutcomeCode, PlannedRecord, RecordOutcome};
use mongodb::bson::{doc, Document};

use super::{found_or_not, ApplyError, BatchMemory, DocumentWriter, Scope, Target};

/// The mark of a document a delete batch is about to remove (a platform field no account
/// may define).
pub const DELETING: &str = "deletingByBulkAction";

/// The mark of one batch of one action.
pub(crate) fn deletion_mark(target: &Target<'_>, batch: &Batch) -> String {
    format!("{}:{}", target.action, batch.number)
}

impl DocumentWriter {
    pub(super) async fn delete(
        &self,
        target: Target<'_>,
        scope: &Scope<'_>,
        batch: &Batch,
        memory: &impl BatchMemory,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        let mark = deletion_mark(&target, batch);
        let marks: Vec<Document> = batch
            .records
            .iter()
            .map(|record| {
                doc! { "q": scope.filter_one(record.key()), "u": { "$set": { DELETING: &mark } } }
            })
            .collect();
        self.run_statements(scope, "update", "updates", marks)
            .await?;
        let records: Vec<&PlannedRecord> = batch.records.iter().collect();
        let found = self
            .find_by_key(
                scope,
                marked(scope, records.iter().map(|r| r.key()), &mark),
                projection(scope),
                records.len(),
            )
            .await?;
        let mut found: Vec<String> = found.into_keys().collect();
        found.sort_unstable();
        let existing: HashSet<String> = memory.found_once(found).await?.into_iter().collect();
        if !existing.is_empty() {
            self.collection(scope)
                .delete_many(marked(scope, existing.iter().map(String::as_str), &mark))
                .await?;
        }
        Ok(found_or_not(
            scope,
            batch,
            |key| existing.contains(key),
            OutcomeCode::Deleted,
        ))
    }

    /// Takes a dead-lettered batch's mark off the documents it did not delete.
    pub(crate) async fn unmark(
        &self,
        target: &Target<'_>,
        scope: &Scope<'_>,
        batch: &Batch,
    ) -> Result<(), ApplyError> {
        let mark = deletion_mark(target, batch);
        self.collection(scope)
            .update_many(
                marked(scope, batch.records.iter().map(|r| r.key()), &mark),
                doc! { "$unset": { DELETING: "" } },
            )
            .await?;
        Ok(())
    }
}

/// `{<key>: {$in: keys}, deletingByBulkAction: mark, accountId}`
fn marked<'k>(scope: &Scope<'_>, keys: impl IntoIterator<Item = &'k str>, mark: &str) -> Document {
    let mut filter = scope.filter_in(keys);
    filter.insert(DELETING, mark);
    filter
}

fn projection(scope: &Scope<'_>) -> Document {
    if scope.key.field() == "_id" {
        doc! { "_id": 1 }
    } else {
        doc! { "_id": 0, scope.key.field(): 1 }
    }
}
