//! The writes of a batch: inserts that skip what an earlier attempt of the action inserted,
//! and `$set`s grouped by identical change, many statements per command.

use std::collections::{BTreeMap, HashMap, HashSet};

use domain::{Batch, PlannedRecord};
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::ErrorKind;

use super::{
    new_document_fields, record_update, ApplyError, DocumentWriter, Scope, Target, CREATED_BY,
    DUPLICATE_KEY,
};

impl DocumentWriter {
    /// Of `records`, the keys whose document this action inserted in an earlier attempt
    /// at this batch. A first attempt has had no earlier one and costs no lookup.
    pub(super) async fn inserted_earlier(
        &self,
        target: Target<'_>,
        scope: &Scope<'_>,
        records: &[&PlannedRecord],
    ) -> Result<HashSet<String>, ApplyError> {
        if target.attempt <= 1 || records.is_empty() {
            return Ok(HashSet::new());
        }
        let mut filter = scope.filter_in(records.iter().map(|r| r.key()));
        filter.insert(CREATED_BY, target.action.to_string());
        let found = self
            .find_by_key(
                scope,
                filter,
                doc! { "_id": 0, scope.key.field(): 1 },
                records.len(),
            )
            .await?;
        Ok(found.into_keys().collect())
    }

    /// Inserts what an earlier attempt did not, and returns the records whose insert hit an
    /// existing contact that this action did not make, with every other refusal.
    ///
    /// On a retry it asks twice. Before inserting, because inserting what exists is far
    /// slower than finding it on some servers (FerretDB: seconds per 500 duplicate keys).
    /// After, because the dead attempt's last command may still be running on the server
    /// (a server finishes a command whose client died), so contacts of ours can appear
    /// between the first look and the insert.
    pub(super) async fn insert_once<'b>(
        &self,
        target: Target<'_>,
        scope: &Scope<'_>,
        batch: &'b Batch,
        now: DateTime,
    ) -> Result<Vec<(&'b PlannedRecord, i32, String)>, ApplyError> {
        let all: Vec<&PlannedRecord> = batch.records.iter().collect();
        let before = self.inserted_earlier(target, scope, &all).await?;
        let fresh: Vec<&PlannedRecord> = all
            .into_iter()
            .filter(|r| !before.contains(r.key()))
            .collect();
        let refused: Vec<(&PlannedRecord, i32, String)> = self
            .insert(target, scope, &fresh, now)
            .await?
            .into_iter()
            .map(|(position, (code, message))| (fresh[position], code, message))
            .collect();
        let collided: Vec<&PlannedRecord> = refused
            .iter()
            .filter(|(_, code, _)| *code == DUPLICATE_KEY)
            .map(|(record, _, _)| *record)
            .collect();
        let after = self.inserted_earlier(target, scope, &collided).await?;
        Ok(refused
            .into_iter()
            .filter(|(record, _, _)| !after.contains(record.key()))
            .collect())
    }

    /// Unordered insert of new documents. Returns the refused positions with code and
    /// message.
    pub(super) async fn insert(
        &self,
        target: Target<'_>,
        scope: &Scope<'_>,
        records: &[&PlannedRecord],
        now: DateTime,
    ) -> Result<HashMap<usize, (i32, String)>, ApplyError> {
        let created_by = target.action.to_string();
        let natural_key = target.entity.spec().natural_key;
        let mut refused = HashMap::new();
        if records.is_empty() {
            return Ok(refused);
        }
        let documents: Vec<Document> = records
            .iter()
            .map(|r| {
                let mut document = doc! {
                    "accountId": scope.account.as_str(),
                    scope.key.field(): scope.key.bson(r.key()),
                };
                if let Some(visible) = scope.key.visible_field() {
                    document.insert(visible, r.key());
                }
                document.extend(new_document_fields(&r.change, natural_key, now));
                document.insert("createdAt", now);
                document.insert(CREATED_BY, created_by.as_str());
                document
            })
            .collect();
        let collection = self.collection(scope);
        if let Err(error) = collection.insert_many(documents).ordered(false).await {
            match *error.kind {
                ErrorKind::InsertMany(ref failure) if failure.write_concern_error.is_none() => {
                    for write_error in failure.write_errors.iter().flatten() {
                        refused.insert(
                            write_error.index,
                            (write_error.code, write_error.message.clone()),
                        );
                    }
                }
                _ => return Err(error.into()),
            }
        }
        Ok(refused)
    }

    /// Applies each record's update to its document (`documents::record_update`), one
    /// statement per distinct update, many statements per command. Returns how many
    /// documents the first statements matched.
    pub(super) async fn set_fields(
        &self,
        scope: &Scope<'_>,
        records: &[&PlannedRecord],
        now: DateTime,
    ) -> Result<i64, ApplyError> {
        let mut first: BTreeMap<Vec<u8>, (Document, Vec<&str>)> = BTreeMap::new();
        let mut then: BTreeMap<Vec<u8>, (Document, Vec<&str>)> = BTreeMap::new();
        for record in records {
            let update = record_update(&record.change, now);
            group(&mut first, update.first, record.key())?;
            if let Some(after) = update.then {
                group(&mut then, after, record.key())?;
            }
        }
        let matched = self.run_updates(scope, first).await?;
        // A list's adds where the same record removed items: after every removal.
        self.run_updates(scope, then).await?;
        Ok(matched)
    }

    /// One statement per group, `statements_per_command` a command; returns how many
    /// documents the statements matched.
    async fn run_updates(
        &self,
        scope: &Scope<'_>,
        groups: BTreeMap<Vec<u8>, (Document, Vec<&str>)>,
    ) -> Result<i64, ApplyError> {
        let statements: Vec<Document> = groups
            .into_values()
            .map(|(update, keys)| match keys.as_slice() {
                [key] => doc! {
                    "q": scope.filter_one(key),
                    "u": update,
                },
                _ => doc! {
                    "q": scope.filter_in(keys),
                    "u": update,
                    "multi": true,
                },
            })
            .collect();
        self.run_statements(scope, "update", "updates", statements)
            .await
    }

    /// Sends `statements` as `command`s (`update`, `delete`) of `statements_per_command`
    /// each; returns how many documents they matched.
    pub(super) async fn run_statements(
        &self,
        scope: &Scope<'_>,
        command: &str,
        list: &str,
        statements: Vec<Document>,
    ) -> Result<i64, ApplyError> {
        let mut matched = 0;
        for chunk in statements.chunks(self.statements_per_command.max(1)) {
            let reply = self
                .database
                .run_command(doc! { command: scope.collection, list: chunk, "ordered": false })
                .await?;
            matched += crate::write_reply::update_reply(&reply)?;
        }
        Ok(matched)
    }

    /// `set_fields` where every record's document must exist: a document deleted
    /// meanwhile fails the attempt, and the retry sees it as missing.
    pub(super) async fn set_all_fields(
        &self,
        scope: &Scope<'_>,
        records: &[&PlannedRecord],
        now: DateTime,
    ) -> Result<(), ApplyError> {
        if records.is_empty() {
            return Ok(());
        }
        let matched = self.set_fields(scope, records, now).await?;
        if matched < records.len() as i64 {
            return Err(ApplyError::Refused(format!(
                "update matched {matched} of {} {}s",
                records.len(),
                scope.noun
            )));
        }
        Ok(())
    }
}

/// Puts `key` in the group of records that make the very same update.
fn group<'a>(
    groups: &mut BTreeMap<Vec<u8>, (Document, Vec<&'a str>)>,
    update: Document,
    key: &'a str,
) -> Result<(), ApplyError> {
    let same_update =
        mongodb::bson::to_vec(&update).map_err(|e| ApplyError::Refused(e.to_string()))?;
    groups
        .entry(same_update)
        .or_insert_with(|| (update, Vec::new()))
        .1
        .push(key);
    Ok(())
}
