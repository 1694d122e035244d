//! Applying one batch to the `contacts` collection in a handful of round trips, whatever
//! its size.
//!
//! The shape of every action type (why: docs/decisions/0038-apply-a-batch-writes-first.md):
//! - a `find` of the batch's emails (`$in`, backed by the `(accountId, email)` index) only
//!   where the outcome depends on which contacts exist and the writes cannot tell;
//! - writes grouped by identical change: records that set the same fields to the same
//!   values share one `multi` update statement with an `$in` filter; a change of its own gets
//!   an equality filter. Bulk CRM changes are mostly uniform ("set status to customer for
//!   these 40k contacts"), so a batch is typically one or two statements;
//! - statements are sent many per `update` command, at most `statements_per_command`.
//!
//! Only the managed fields are ever `$set` or (when a record clears one) `$unset`; a
//! contact's `_id` and every field we do not manage are left as they are, whatever their
//! shape.
//!
//! Contacts the platform inserts carry `createdByBulkAction: <actionId>`. A retried attempt
//! at a create or upsert batch looks up which of its emails an earlier attempt of this very
//! action inserted (before its insert, and again for what collided); those are `created`,
//! so a crash does not turn `created` into `updated` or `already_exists`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use domain::{AccountId, ActionId, ActionType, Batch, OutcomeCode, PlannedRecord, RecordOutcome};
use futures::TryStreamExt;
use infra::mongo::CONTACTS;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::FindOptions;
use mongodb::Database;

const DUPLICATE_KEY: i32 = 11000;
const NOT_FOUND_MESSAGE: &str = "no contact with this email in the account";
pub const CREATED_BY: &str = "createdByBulkAction";

mod documents;
mod lists;
mod writes;

pub(crate) use documents::{bson, contact_update, new_contact_fields};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("the server refused part of the batch: {0}")]
    Refused(String),
    #[error("the write was not acknowledged as the write concern asks: {0}")]
    WriteConcern(String),
    #[error("remembering what the batch found: {0}")]
    Memory(#[from] infra::StoreError),
}

/// Where an attempt at a batch leaves what later attempts must agree with. Deletes need it:
/// once an attempt has deleted a contact, a retry can no longer find it, yet must still
/// report it `deleted`, not `not_found`.
pub trait BatchMemory {
    /// Records `found` as the emails this batch found in the account, unless an earlier
    /// attempt recorded its own; returns what is recorded (the first attempt's list).
    fn found_once(
        &self,
        found: Vec<String>,
    ) -> impl std::future::Future<Output = Result<Vec<String>, infra::StoreError>> + Send;
}

impl ApplyError {
    /// The server could not be reached at all (down, restarting, network): waiting for it
    /// is right, and the attempt must not count towards dead-lettering the batch. Anything
    /// else is an answer from the server about this batch.
    pub fn is_outage(&self) -> bool {
        let error = match self {
            ApplyError::Mongo(error) => error,
            ApplyError::Memory(infra::StoreError::Redis(_)) => return true,
            _ => return false,
        };
        infra::mongo::is_outage(error)
    }
}

/// The memory of a batch that is on a work stream: fields of its action's meta in Redis.
pub struct BatchInRedis<'a> {
    pub store: &'a infra::Settlement,
    pub item: &'a infra::work::WorkItem,
}

impl BatchMemory for BatchInRedis<'_> {
    async fn found_once(&self, found: Vec<String>) -> Result<Vec<String>, infra::StoreError> {
        self.store.found_once(self.item, &found).await
    }
}

/// The batch to apply and where it comes from.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub account: &'a AccountId,
    pub action: ActionId,
    pub action_type: ActionType,
    /// 1 for the first try at the batch; more means an earlier try may have written: an
    /// earlier attempt, or this one before an outage cut it off.
    pub attempt: u32,
}

/// Where and how batches are written.
#[derive(Debug, Clone)]
pub struct ContactWriter {
    pub database: Database,
    /// Statements per `update` command. FerretDB 1.24 holds a backend connection per
    /// statement until the command ends and hangs past its pool size (about 50).
    pub statements_per_command: usize,
}

impl ContactWriter {
    pub async fn apply(
        &self,
        target: Target<'_>,
        batch: &Batch,
        memory: &impl BatchMemory,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        if batch.records.is_empty() {
            return Ok(Vec::new());
        }
        let now = DateTime::now();
        let account = target.account;
        let (batch, mut refused) = match target.action_type {
            ActionType::Update | ActionType::Upsert => {
                self.without_list_conflicts(account, batch).await?
            }
            ActionType::Create | ActionType::Delete => (Cow::Borrowed(batch), Vec::new()),
        };
        let batch = batch.as_ref();
        let mut outcomes = if batch.records.is_empty() {
            Vec::new()
        } else {
            match target.action_type {
                ActionType::Update => self.update(account, batch, now).await?,
                ActionType::Upsert => self.upsert(target, batch, now).await?,
                ActionType::Create => self.create(target, batch, now).await?,
                ActionType::Delete => self.delete(account, batch, memory).await?,
            }
        };
        if !refused.is_empty() {
            outcomes.append(&mut refused);
            outcomes.sort_by_key(|outcome| outcome.index);
        }
        Ok(outcomes)
    }

    /// Optimistic: the `$set`s go out first, and only if they matched fewer contacts than
    /// records does a `find` learn which ones are missing. A batch whose contacts all exist
    /// (the usual case) costs no lookup.
    async fn update(
        &self,
        account: &AccountId,
        batch: &Batch,
        now: DateTime,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        let records: Vec<&PlannedRecord> = batch.records.iter().collect();
        let matched = self.set_fields(account, &records, now).await?;
        if matched >= records.len() as i64 {
            return Ok(found_or_not(batch, |_| true, OutcomeCode::Updated));
        }
        // Some are missing. Re-apply to exactly the ones that exist now, so that every record
        // reported `updated` has had its change applied, even one created meanwhile.
        let existing = self.existing_emails(account, &batch.records).await?;
        let present: Vec<&PlannedRecord> = records
            .into_iter()
            .filter(|r| existing.contains(email_of(r)))
            .collect();
        self.set_all_fields(account, &present, now).await?;
        Ok(found_or_not(
            batch,
            |email| existing.contains(email),
            OutcomeCode::Updated,
        ))
    }

    /// Inserts every record; the ones that collide with an existing contact (code 11000) are
    /// updated instead. New contacts thus cost one unordered insert and no lookup at all.
    async fn upsert(
        &self,
        target: Target<'_>,
        batch: &Batch,
        now: DateTime,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        let refused = self.insert_once(target, batch, now).await?;
        let mut existing = Vec::with_capacity(refused.len());
        for (record, code, message) in refused {
            if code != DUPLICATE_KEY {
                return Err(ApplyError::Refused(message));
            }
            existing.push(record);
        }
        self.set_all_fields(target.account, &existing, now).await?;
        let updated: HashSet<&str> = existing.iter().map(|r| email_of(r)).collect();
        Ok(batch
            .records
            .iter()
            .map(|r| {
                if updated.contains(email_of(r)) {
                    outcome(r, OutcomeCode::Updated, None)
                } else {
                    outcome(r, OutcomeCode::Created, None)
                }
            })
            .collect())
    }

    async fn create(
        &self,
        target: Target<'_>,
        batch: &Batch,
        now: DateTime,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        let refused: HashMap<&str, (i32, String)> = self
            .insert_once(target, batch, now)
            .await?
            .into_iter()
            .map(|(record, code, message)| (email_of(record), (code, message)))
            .collect();
        Ok(batch
            .records
            .iter()
            .map(|r| match refused.get(email_of(r)) {
                None => outcome(r, OutcomeCode::Created, None),
                Some((DUPLICATE_KEY, _)) => outcome(
                    r,
                    OutcomeCode::AlreadyExists,
                    Some("a contact with this email already exists in the account"),
                ),
                Some((_, message)) => outcome(r, OutcomeCode::StoreError, Some(message)),
            })
            .collect())
    }

    /// One `find`, the found emails remembered (so every attempt deletes and reports the
    /// same set as the first), then one `delete` with `$in`.
    async fn delete(
        &self,
        account: &AccountId,
        batch: &Batch,
        memory: &impl BatchMemory,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        let mut found: Vec<String> = self
            .existing_emails(account, &batch.records)
            .await?
            .into_iter()
            .collect();
        found.sort_unstable();
        let existing: HashSet<String> = memory.found_once(found).await?.into_iter().collect();
        if !existing.is_empty() {
            let emails: Vec<&str> = existing.iter().map(String::as_str).collect();
            self.contacts()
                .delete_many(doc! { "accountId": account.as_str(), "email": { "$in": emails } })
                .await?;
        }
        Ok(found_or_not(
            batch,
            |email| existing.contains(email),
            OutcomeCode::Deleted,
        ))
    }

    fn contacts(&self) -> mongodb::Collection<Document> {
        self.database.collection(CONTACTS)
    }

    async fn existing_emails(
        &self,
        account: &AccountId,
        records: &[PlannedRecord],
    ) -> Result<HashSet<String>, ApplyError> {
        let emails: Vec<&str> = records.iter().map(email_of).collect();
        let at_most = emails.len();
        self.emails_matching(
            doc! { "accountId": account.as_str(), "email": { "$in": emails } },
            at_most,
        )
        .await
    }

    /// The batch's contacts in the account, by email, with the fields `projection` names,
    /// in one reply (at most one contact per email).
    pub(crate) async fn contacts_by_email(
        &self,
        account: &AccountId,
        batch: &Batch,
        projection: Document,
    ) -> Result<HashMap<String, Document>, ApplyError> {
        let emails: Vec<&str> = batch.records.iter().map(email_of).collect();
        let options = FindOptions::builder()
            .projection(projection)
            .batch_size(u32::try_from(emails.len().max(1)).unwrap_or(u32::MAX))
            .build();
        let found: Vec<Document> = self
            .contacts()
            .find(doc! { "accountId": account.as_str(), "email": { "$in": emails } })
            .with_options(options)
            .await?
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|contact| Some((contact.get_str("email").ok()?.to_owned(), contact)))
            .collect())
    }

    /// `at_most` bounds the answer (one contact per email and account), so it comes in one
    /// reply: no `getMore`, which FerretDB fails once the connection that opened the cursor
    /// is gone, e.g. after an outage.
    async fn emails_matching(
        &self,
        filter: Document,
        at_most: usize,
    ) -> Result<HashSet<String>, ApplyError> {
        let options = FindOptions::builder()
            .projection(doc! { "_id": 0, "email": 1 })
            .batch_size(u32::try_from(at_most.max(1)).unwrap_or(u32::MAX))
            .build();
        let found: Vec<Document> = self
            .contacts()
            .find(filter)
            .with_options(options)
            .await?
            .try_collect()
            .await?;
        Ok(found
            .iter()
            .filter_map(|contact| contact.get_str("email").ok().map(str::to_owned))
            .collect())
    }
}

/// `done` for records whose contact existed, `not_found` for the others.
fn found_or_not(
    batch: &Batch,
    existed: impl Fn(&str) -> bool,
    done: OutcomeCode,
) -> Vec<RecordOutcome> {
    batch
        .records
        .iter()
        .map(|r| {
            if existed(email_of(r)) {
                outcome(r, done, None)
            } else {
                outcome(r, OutcomeCode::NotFound, Some(NOT_FOUND_MESSAGE))
            }
        })
        .collect()
}

pub(crate) fn email_of(record: &PlannedRecord) -> &str {
    record.change.email.as_str()
}

fn outcome(record: &PlannedRecord, code: OutcomeCode, message: Option<&str>) -> RecordOutcome {
    RecordOutcome::new(
        record.index,
        Some(email_of(record).to_owned()),
        code,
        message,
    )
}
