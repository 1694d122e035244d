//! A record that edits a list (`{"add": …, "remove": …}`) of a contact whose stored value
//! there is not a list: MongoDB refuses `$addToSet` and `$pullAll` on it, and the refusal
//! would fail the whole batch on every attempt. Such records are found first and fail
//! alone, `invalid_type`; the rest of the batch is applied.

use std::borrow::Cow;
use std::collections::BTreeSet;

use domain::fields::FieldChange;
use domain::{Batch, OutcomeCode, RecordOutcome};
use mongodb::bson::{doc, Bson};

use super::{email_of, ApplyError, ContactWriter};

impl ContactWriter {
    /// The batch without the records that edit a non-list, and those records' outcomes.
    /// One lookup, and only for a batch that edits lists. A value changed to a non-list
    /// between the lookup and the write fails the attempt, and the retry finds it.
    pub(super) async fn without_list_conflicts<'b>(
        &self,
        account: &domain::AccountId,
        batch: &'b Batch,
    ) -> Result<(Cow<'b, Batch>, Vec<RecordOutcome>), ApplyError> {
        let edited: BTreeSet<&str> = batch
            .records
            .iter()
            .flat_map(|record| &record.change.custom)
            .filter(|(_, change)| matches!(change, FieldChange::Edit { .. }))
            .map(|(name, _)| name.as_str())
            .collect();
        if edited.is_empty() {
            return Ok((Cow::Borrowed(batch), Vec::new()));
        }
        let mut projection = doc! { "_id": 0, "email": 1 };
        for name in &edited {
            projection.insert(*name, 1);
        }
        let stored = self.contacts_by_email(account, batch, projection).await?;
        let mut kept = Vec::with_capacity(batch.records.len());
        let mut refused = Vec::new();
        for record in &batch.records {
            let not_a_list = stored.get(email_of(record)).and_then(|contact| {
                record.change.custom.iter().find_map(|(name, change)| {
                    let edits = matches!(change, FieldChange::Edit { .. });
                    let stored = contact.get(name);
                    (edits && !matches!(stored, None | Some(Bson::Array(_)) | Some(Bson::Null)))
                        .then_some(name)
                })
            });
            match not_a_list {
                Some(name) => refused.push(RecordOutcome::new(
                    record.index,
                    Some(email_of(record).to_owned()),
                    OutcomeCode::InvalidType,
                    Some(&format!(
                        "{name} holds a value that is not a list on this contact; \
                         send a list to replace it first"
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
        };
        Ok((Cow::Owned(rest), refused))
    }
}
