//! A record that edits a list (`{"add": …, "remove": …}`) of a document whose stored value
//! there is not a list: MongoDB refuses `$addToSet` and `$pullAll` on it, and the refusal
//! would fail the whole batch on every attempt. Such records are found first and fail
//! alone, `invalid_type`; the rest of the batch is applied.

use std::borrow::Cow;
use std::collections::BTreeSet;

use domain::fields::FieldChange;
use domain::{Batch, OutcomeCode, RecordOutcome};
use mongodb::bson::{doc, Bson};

use super::{ApplyError, DocumentWriter, Scope};

impl DocumentWriter {
    /// The batch without the records that edit a non-list, and those records' outcomes.
    /// One lookup, and only for a batch that edits lists. A value changed to a non-list
    /// between the lookup and the write fails the attempt, and the retry finds it.
    pub(super) async fn without_list_conflicts<'b>(
        &self,
        scope: &Scope<'_>,
        batch: &'b Batch,
    ) -> Result<(Cow<'b, Batch>, Vec<RecordOutcome>), ApplyError> {
        let edited: BTreeSet<&str> = batch
            .records
            .iter()
            .flat_map(|record| &record.change.fields)
            .filter(|(_, change)| matches!(change, FieldChange::Edit { .. }))
            .map(|(name, _)| name)
            .collect();
        if edited.is_empty() {
            return Ok((Cow::Borrowed(batch), Vec::new()));
        }
        let mut projection = doc! {};
        for name in &edited {
            projection.insert(*name, 1);
        }
        let records: Vec<&domain::PlannedRecord> = batch.records.iter().collect();
        let stored = self.documents_by_key(scope, &records, projection).await?;
        let mut kept = Vec::with_capacity(batch.records.len());
        let mut refused = Vec::new();
        for record in &batch.records {
            let not_a_list = stored.get(record.key()).and_then(|document| {
                record.change.fields.iter().find_map(|(name, change)| {
                    let edits = matches!(change, FieldChange::Edit { .. });
                    let stored = document.get(name);
                    // MongoDB refuses `$addToSet` and `$pullAll` on a `null` as on any
                    // other non-list; only an absent field or a list can be edited.
                    (edits && !matches!(stored, None | Some(Bson::Array(_)))).then_some(name)
                })
            });
            match not_a_list {
                Some(name) => refused.push(RecordOutcome::new(
                    record.index,
                    Some(record.key().to_owned()),
                    OutcomeCode::InvalidType,
                    Some(&format!(
                        "{name} holds a value that is not a list on this {}; \
                         send a list to replace it first",
                        scope.noun
                    )),
                )),
                None => kept.push(record.clone()),
            }
        }
        if refused.is_empty() {
            return Ok((Cow::Borrowed(batch), refused));
        }
        let rest = Batch {
            number: batch.number,
            records: kept,
            match_by: batch.match_by.clone(),
        };
        Ok((Cow::Owned(rest), refused))
    }
}
