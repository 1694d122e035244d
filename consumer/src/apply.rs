//! Applying one batch to its entity's collection in a handful of round trips, whatever its
//! size.
//!
//! The shape of every action type (why: docs/decisions/0038-apply-a-batch-writes-first.md):
//! - a `find` of the batch's keys (`$in`, backed by the key's unique index) only where the
//!   outcome depends on which documents exist and the writes cannot tell;
//! - writes grouped by identical change: records that set the same fields to the same
//!   values share one `multi` update statement with an `$in` filter; a change of its own gets
//!   an equality filter. Bulk CRM changes are mostly uniform ("set status to customer for
//!   these 40k contacts"), so a batch is typically one or two statements;
//! - statements are sent many per `update` command, at most `statements_per_command`.
//!
//! A record finds its document by the key its action matches by (`Key`): the entity's
//! natural key, the document `_id`, or an account's external id field. Only the fields a
//! record names are ever `$set` or (when it clears one) `$unset`; a document's `_id` and
//! every field the record does not name are left as they are, whatever their shape.
//!
//! Documents the platform inserts carry `createdByBulkAction: <actionId>`. A retried
//! attempt at a create or upsert batch looks up which of its keys an earlier attempt of this
//! very action inserted (before its insert, and again for what collided); those are
//! `created`, so a crash does not turn `created` into `updated` or `already_exists`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use domain::{
    AccountId, ActionId, ActionType, Batch, EntityType, MatchBy, OutcomeCode, PlannedRecord,
    RecordOutcome,
};
use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::FindOptions;
use mongodb::Database;

const DUPLICATE_KEY: i32 = 11000;
pub const CREATED_BY: &str = "createdByBulkAction";

mod deletes;
mod documents;
mod key;
mod lists;
mod sync;
mod writes;

pub(crate) use documents::{bson, new_document_fields, record_update};
pub(crate) use key::Key;

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
/// once an attempt has deleted a document, a retry can no longer find it, yet must still
/// report it `deleted`, not `not_found`.
pub trait BatchMemory {
    /// Records `found` as the keys this batch found in the account, unless an earlier
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
    pub entity: EntityType,
    /// 1 for the first try at the batch; more means an earlier try may have written: an
    /// earlier attempt, or this one before an outage cut it off.
    pub attempt: u32,
}

/// Where and how batches are written.
#[derive(Debug, Clone)]
pub struct DocumentWriter {
    pub database: Database,
    /// Statements per `update` command. FerretDB 1.24 holds a backend connection per
    /// statement until the command ends and hangs past its pool size (about 50).
    pub statements_per_command: usize,
    /// The external id slot indexes this process has made sure of, by collection: asked
    /// for once each, whichever worker meets the slot first.
    pub slot_indexes: Arc<Mutex<HashSet<(&'static str, u8)>>>,
}

/// One batch's documents: its account, its collection, the key its records find them by.
pub(crate) struct Scope<'a> {
    pub(crate) account: &'a AccountId,
    pub(crate) collection: &'static str,
    pub(crate) noun: &'static str,
    pub(crate) key: Key<'a>,
}

impl<'a> Scope<'a> {
    pub(crate) fn of(target: &Target<'a>, match_by: &'a MatchBy) -> Self {
        let spec = target.entity.spec();
        Self {
            account: target.account,
            collection: spec.collection,
            noun: target.entity.as_str(),
            key: Key::of(spec, match_by),
        }
    }

    /// `{<key>: {$in: keys}, accountId}`
    pub(crate) fn filter_in<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Document {
        doc! {
            self.key.field(): { "$in": keys.into_iter().map(|key| self.key.bson(key)).collect::<Vec<_>>() },
            "accountId": self.account.as_str(),
        }
    }

    /// `{<key>: key, accountId}`, the key first: FerretDB tests a filter's fields in their
    /// order for every document it scans, and the key rules out all but one document where
    /// the account rules out none in a one-account collection (update by key first: 340
    /// statements/s against 210 at 20,000 documents, measured; docs/benchmarks.md).
    pub(crate) fn filter_one(&self, key: &str) -> Document {
        doc! { self.key.field(): self.key.bson(key), "accountId": self.account.as_str() }
    }
}

impl DocumentWriter {
    /// A writer with the defaults of `ConsumerConfig`.
    pub fn new(database: Database) -> Self {
        Self {
            database,
            statements_per_command: 32,
            slot_indexes: Arc::default(),
        }
    }

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
        let scope = Scope::of(&target, &batch.match_by);
        if let MatchBy::ExternalId { slot, .. } = batch.match_by {
            self.ensure_slot_index(scope.collection, slot).await?;
        }
        let (batch, mut refused) = match target.action_type {
            ActionType::Update | ActionType::Upsert => {
                self.without_list_conflicts(&scope, batch).await?
            }
            ActionType::Create | ActionType::Delete => (Cow::Borrowed(batch), Vec::new()),
        };
        let batch = batch.as_ref();
        let mut outcomes = if batch.records.is_empty() {
            Vec::new()
        } else {
            match target.action_type {
                ActionType::Update => self.update(&scope, batch, now).await?,
                ActionType::Upsert if matches!(batch.match_by, MatchBy::ExternalId { .. }) => {
                    self.sync(target, &scope, batch, now).await?
                }
                ActionType::Upsert => self.upsert(target, &scope, batch, now).await?,
                ActionType::Create => self.create(target, &scope, batch, now).await?,
                ActionType::Delete => self.delete(target, &scope, batch, memory).await?,
            }
        };
        if !refused.is_empty() {
            outcomes.append(&mut refused);
            outcomes.sort_by_key(|outcome| outcome.index);
        }
        Ok(outcomes)
    }

    /// Optimistic: the `$set`s go out first, and only if they matched fewer documents than
    /// records does a `find` learn which ones are missing. A batch whose documents all
    /// exist (the usual case) costs no lookup.
    async fn update(
        &self,
        scope: &Scope<'_>,
        batch: &Batch,
        now: DateTime,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        let records: Vec<&PlannedRecord> = batch.records.iter().collect();
        let matched = self.set_fields(scope, &records, now).await?;
        if matched >= records.len() as i64 {
            return Ok(found_or_not(scope, batch, |_| true, OutcomeCode::Updated));
        }
        // Some are missing. Re-apply to exactly the ones that exist now, so that every record
        // reported `updated` has had its change applied, even one created meanwhile.
        let existing = self.existing_keys(scope, &records).await?;
        let present: Vec<&PlannedRecord> = records
            .into_iter()
            .filter(|r| existing.contains(r.key()))
            .collect();
        self.set_all_fields(scope, &present, now).await?;
        Ok(found_or_not(
            scope,
            batch,
            |key| existing.contains(key),
            OutcomeCode::Updated,
        ))
    }

    /// Inserts every record; the ones that collide with an existing document (code 11000)
    /// are updated instead. New documents thus cost one unordered insert and no lookup.
    /// (An upsert by an external id updates first: `sync`.)
    async fn upsert(
        &self,
        target: Target<'_>,
        scope: &Scope<'_>,
        batch: &Batch,
        now: DateTime,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        let refused = self.insert_once(target, scope, batch, now).await?;
        let mut collided = Vec::with_capacity(refused.len());
        for (record, code, message) in refused {
            if code != DUPLICATE_KEY {
                return Err(ApplyError::Refused(message));
            }
            collided.push(record);
        }
        // One deleted between the insert and the update fails the attempt: the retry
        // inserts it.
        self.set_all_fields(scope, &collided, now).await?;
        let updated: HashSet<&str> = collided.iter().map(|r| r.key()).collect();
        Ok(batch
            .records
            .iter()
            .map(|r| {
                if updated.contains(r.key()) {
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
        scope: &Scope<'_>,
        batch: &Batch,
        now: DateTime,
    ) -> Result<Vec<RecordOutcome>, ApplyError> {
        let refused: HashMap<&str, (i32, String)> = self
            .insert_once(target, scope, batch, now)
            .await?
            .into_iter()
            .map(|(record, code, message)| (record.key(), (code, message)))
            .collect();
        let exists = format!(
            "a {} with this {} already exists in the account",
            scope.noun, scope.key.name
        );
        Ok(batch
            .records
            .iter()
            .map(|r| match refused.get(r.key()) {
                None => outcome(r, OutcomeCode::Created, None),
                Some((DUPLICATE_KEY, _)) => outcome(r, OutcomeCode::AlreadyExists, Some(&exists)),
                Some((_, message)) => outcome(r, OutcomeCode::StoreError, Some(message)),
            })
            .collect())
    }

    pub(crate) fn collection(&self, scope: &Scope<'_>) -> mongodb::Collection<Document> {
        self.database.collection(scope.collection)
    }

    pub(crate) async fn existing_keys(
        &self,
        scope: &Scope<'_>,
        records: &[&PlannedRecord],
    ) -> Result<HashSet<String>, ApplyError> {
        let found = self
            .documents_by_key(scope, records, doc! { scope.key.field(): 1 })
            .await?;
        Ok(found.into_keys().collect())
    }

    /// The records' documents in the account, by key, with the fields `projection` names,
    /// in one reply (at most one document per key). `at_most` bounds the answer, so it
    /// comes in one reply: no `getMore`, which FerretDB fails once the connection that
    /// opened the cursor is gone, e.g. after an outage.
    pub(crate) async fn documents_by_key(
        &self,
        scope: &Scope<'_>,
        records: &[&PlannedRecord],
        mut projection: Document,
    ) -> Result<HashMap<String, Document>, ApplyError> {
        if records.is_empty() {
            return Ok(HashMap::new());
        }
        projection.insert(scope.key.field(), 1);
        if scope.key.field() != "_id" {
            projection.insert("_id", 0);
        }
        self.find_by_key(
            scope,
            scope.filter_in(records.iter().map(|r| r.key())),
            projection,
            records.len(),
        )
        .await
    }

    pub(crate) async fn find_by_key(
        &self,
        scope: &Scope<'_>,
        filter: Document,
        projection: Document,
        at_most: usize,
    ) -> Result<HashMap<String, Document>, ApplyError> {
        let options = FindOptions::builder()
            .projection(projection)
            .batch_size(u32::try_from(at_most.max(1)).unwrap_or(u32::MAX))
            .build();
        let found: Vec<Document> = self
            .collection(scope)
            .find(filter)
            .with_options(options)
            .await?
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|document| Some((scope.key.text_of(&document)?, document)))
            .collect())
    }
}

impl DocumentWriter {
    async fn ensure_slot_index(
        &self,
        collection: &'static str,
        slot: u8,
    ) -> Result<(), ApplyError> {
        let known = |indexes: &Mutex<HashSet<(&'static str, u8)>>| {
            indexes
                .lock()
                .is_ok_and(|made| made.contains(&(collection, slot)))
        };
        if known(&self.slot_indexes) {
            return Ok(());
        }
        infra::mongo::ensure_slot_index(&self.database, collection, slot).await?;
        if let Ok(mut made) = self.slot_indexes.lock() {
            made.insert((collection, slot));
        }
        Ok(())
    }
}

/// `done` for records whose document existed, `not_found` for the others.
fn found_or_not(
    scope: &Scope<'_>,
    batch: &Batch,
    existed: impl Fn(&str) -> bool,
    done: OutcomeCode,
) -> Vec<RecordOutcome> {
    let missing = format!(
        "no {} with this {} in the account",
        scope.noun, scope.key.name
    );
    batch
        .records
        .iter()
        .map(|r| {
            if existed(r.key()) {
                outcome(r, done, None)
            } else {
                outcome(r, OutcomeCode::NotFound, Some(&missing))
            }
        })
        .collect()
}

pub(crate) fn outcome(
    record: &PlannedRecord,
    code: OutcomeCode,
    message: Option<&str>,
) -> RecordOutcome {
    RecordOutcome::new(record.index, Some(record.key().to_owned()), code, message)
}
