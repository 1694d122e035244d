//! The writes of a batch: inserts that skip what an earlier attempt of the action inserted,
//! and `$set`s grouped by identical change, many statements per command.

use std::collections::{BTreeMap, HashMap, HashSet};

use domain::{AccountId, Batch, PlannedRecord};
use infra::mongo::CONTACTS;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::ErrorKind;

use super::{
    contact_update, email_of, new_contact_fields, ApplyError, ContactWriter, Target, CREATED_BY,
    DUPLICATE_KEY,
};

impl ContactWriter {
    /// Of `records`, the emails whose contact this action inserted in an earlier attempt
    /// at this batch. A first attempt has had no earlier one and costs no lookup.
    pub(super) async fn inserted_earlier(
        &self,
        target: Target<'_>,
        records: &[&PlannedRecord],
    ) -> Result<HashSet<String>, ApplyError> {
        if target.attempt <= 1 || records.is_empty() {
            return Ok(HashSet::new());
        }
        let emails: Vec<&str> = records.iter().map(|r| email_of(r)).collect();
        let at_most = emails.len();
        let filter = doc! {
            "accountId": target.account.as_str(),
            "email": { "$in": emails },
            CREATED_BY: target.action.to_string(),
        };
        self.emails_matching(filter, at_most).await
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
        batch: &'b Batch,
        now: DateTime,
    ) -> Result<Vec<(&'b PlannedRecord, i32, String)>, ApplyError> {
        let all: Vec<&PlannedRecord> = batch.records.iter().collect();
        let before = self.inserted_earlier(target, &all).await?;
        let fresh: Vec<&PlannedRecord> = all
            .into_iter()
            .filter(|r| !before.contains(email_of(r)))
            .collect();
        let refused: Vec<(&PlannedRecord, i32, String)> = self
            .insert(target, &fresh, now)
            .await?
            .into_iter()
            .map(|(position, (code, message))| (fresh[position], code, message))
            .collect();
        let collided: Vec<&PlannedRecord> = refused
            .iter()
            .filter(|(_, code, _)| *code == DUPLICATE_KEY)
            .map(|(record, _, _)| *record)
            .collect();
        let after = self.inserted_earlier(target, &collided).await?;
        Ok(refused
            .into_iter()
            .filter(|(record, _, _)| !after.contains(email_of(record)))
            .collect())
    }

    /// Unordered insert of new contacts. Returns the refused positions with code and message.
    pub(super) async fn insert(
        &self,
        target: Target<'_>,
        records: &[&PlannedRecord],
        now: DateTime,
    ) -> Result<HashMap<usize, (i32, String)>, ApplyError> {
        let account = target.account;
        let created_by = target.action.to_string();
        let mut refused = HashMap::new();
        if records.is_empty() {
            return Ok(refused);
        }
        let documents: Vec<Document> = records
            .iter()
            .map(|r| {
                let mut contact = doc! { "accountId": account.as_str(), "email": email_of(r) };
                contact.extend(new_contact_fields(&r.change, now));
                contact.insert("createdAt", now);
                contact.insert(CREATED_BY, created_by.as_str());
                contact
            })
            .collect();
        if let Err(error) = self.contacts().insert_many(documents).ordered(false).await {
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

    /// Applies each record's update to its contact (`documents::contact_update`), one
    /// statement per distinct update, many statements per command. Returns how many
    /// contacts the first statements matched.
    pub(super) async fn set_fields(
        &self,
        account: &AccountId,
        records: &[&PlannedRecord],
        now: DateTime,
    ) -> Result<i64, ApplyError> {
        let mut first: BTreeMap<Vec<u8>, (Document, Vec<&str>)> = BTreeMap::new();
        let mut then: BTreeMap<Vec<u8>, (Document, Vec<&str>)> = BTreeMap::new();
        for record in records {
            let update = contact_update(&record.change, now);
            group(&mut first, update.first, email_of(record))?;
            if let Some(after) = update.then {
                group(&mut then, after, email_of(record))?;
            }
        }
        let matched = self.run_updates(account, first).await?;
        // A list's adds where the same record removed items: after every removal.
        self.run_updates(account, then).await?;
        Ok(matched)
    }

    /// One statement per group, `statements_per_command` a command; returns how many
    /// contacts the statements matched.
    async fn run_updates(
        &self,
        account: &AccountId,
        groups: BTreeMap<Vec<u8>, (Document, Vec<&str>)>,
    ) -> Result<i64, ApplyError> {
        let statements: Vec<Document> = groups
            .into_values()
            .map(|(update, emails)| match emails.as_slice() {
                [email] => doc! {
                    "q": { "accountId": account.as_str(), "email": *email },
                    "u": update,
                },
                _ => doc! {
                    "q": { "accountId": account.as_str(), "email": { "$in": emails } },
                    "u": update,
                    "multi": true,
                },
            })
            .collect();
        let mut matched = 0;
        for chunk in statements.chunks(self.statements_per_command.max(1)) {
            let reply = self
                .database
                .run_command(doc! { "update": CONTACTS, "updates": chunk, "ordered": false })
                .await?;
            matched += crate::write_reply::update_reply(&reply)?;
        }
        Ok(matched)
    }

    /// `set_fields` where every record's contact must exist: a contact deleted meanwhile
    /// fails the attempt, and the retry sees it as missing.
    pub(super) async fn set_all_fields(
        &self,
        account: &AccountId,
        records: &[&PlannedRecord],
        now: DateTime,
    ) -> Result<(), ApplyError> {
        let matched = self.set_fields(account, records, now).await?;
        if matched < records.len() as i64 {
            return Err(ApplyError::Refused(format!(
                "update matched {matched} of {} contacts",
                records.len()
            )));
        }
        Ok(())
    }
}

/// Puts `email` in the group of records that make the very same update.
fn group<'a>(
    groups: &mut BTreeMap<Vec<u8>, (Document, Vec<&'a str>)>,
    update: Document,
    email: &'a str,
) -> Result<(), ApplyError> {
    let key = mongodb::bson::to_vec(&update).map_err(|e| ApplyError::Refused(e.to_string()))?;
    groups
        .entry(key)
        .or_insert_with(|| (update, Vec::new()))
        .1
        .push(email);
    Ok(())
}
