//! Applying one batch to the `contacts` collection, in a few round trips whatever its size:
//! one `find` to learn which emails exist (update, delete), then one multi-statement
//! `update`, one unordered `insert` or one `delete`.
//!
//! Only the managed fields are ever `$set`; a contact's `_id` and every field we do not
//! manage are left as they are, whatever their shape.

use std::collections::HashSet;

use domain::{AccountId, ActionType, Batch, ContactChange, OutcomeCode, RecordOutcome};
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::ErrorKind;
use mongodb::options::FindOptions;
use mongodb::Database;

use futures::TryStreamExt;
use infra::mongo::CONTACTS;

const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("the server refused part of the batch: {0}")]
    Refused(String),
}

pub async fn apply_batch(
    database: &Database,
    account: &AccountId,
    action_type: ActionType,
    batch: &Batch,
) -> Result<Vec<RecordOutcome>, ApplyError> {
    if batch.records.is_empty() {
        return Ok(Vec::new());
    }
    let now = DateTime::now();
    match action_type {
        ActionType::Update => update(database, account, batch, now).await,
        ActionType::Upsert => upsert(database, account, batch, now).await,
        ActionType::Create => create(database, account, batch, now).await,
        ActionType::Delete => delete(database, account, batch).await,
    }
}

fn outcome(index: u32, change: &ContactChange, code: OutcomeCode, message: Option<&str>) -> RecordOutcome {
    RecordOutcome {
        index,
        email: Some(change.email.as_str().to_owned()),
        code,
        message: message.map(str::to_owned),
    }
}

fn key(account: &AccountId, change: &ContactChange) -> Document {
    doc! { "accountId": account.as_str(), "email": change.email.as_str() }
}

fn managed_fields(change: &ContactChange, now: DateTime) -> Document {
    let mut set = Document::new();
    if let Some(name) = &change.fields.name {
        set.insert("name", name.as_str());
    }
    if let Some(age) = change.fields.age {
        set.insert("age", age);
    }
    if let Some(status) = &change.fields.status {
        set.insert("status", status.as_str());
    }
    set.insert("updatedAt", now);
    set
}

async fn existing_emails(
    database: &Database,
    account: &AccountId,
    batch: &Batch,
) -> Result<HashSet<String>, ApplyError> {
    let emails: Vec<&str> = batch.records.iter().map(|r| r.change.email.as_str()).collect();
    let options = FindOptions::builder()
        .projection(doc! { "_id": 0, "email": 1 })
        .build();
    let found: Vec<Document> = database
        .collection::<Document>(CONTACTS)
        .find(doc! { "accountId": account.as_str(), "email": { "$in": emails } })
        .with_options(options)
        .await?
        .try_collect()
        .await?;
    Ok(found
        .iter()
        .filter_map(|contact| contact.get_str("email").ok().map(str::to_owned))
        .collect())
}

/// Sends many update statements as one `update` command.
async fn run_updates(database: &Database, statements: Vec<Document>) -> Result<Document, ApplyError> {
    let expected = statements.len() as i64;
    let reply = database
        .run_command(doc! { "update": CONTACTS, "updates": statements, "ordered": false })
        .await?;
    if let Ok(errors) = reply.get_array("writeErrors") {
        if !errors.is_empty() {
            return Err(ApplyError::Refused(format!("{errors:?}")));
        }
    }
    let matched = number(reply.get("n"));
    if matched < expected {
        return Err(ApplyError::Refused(format!(
            "update matched {matched} of {expected} statements"
        )));
    }
    Ok(reply)
}

fn number(value: Option<&Bson>) -> i64 {
    match value {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

async fn update(
    database: &Database,
    account: &AccountId,
    batch: &Batch,
    now: DateTime,
) -> Result<Vec<RecordOutcome>, ApplyError> {
    let existing = existing_emails(database, account, batch).await?;
    let statements: Vec<Document> = batch
        .records
        .iter()
        .filter(|r| existing.contains(r.change.email.as_str()))
        .map(|r| {
            doc! {
                "q": key(account, &r.change),
                "u": { "$set": managed_fields(&r.change, now) },
            }
        })
        .collect();
    if !statements.is_empty() {
        run_updates(database, statements).await?;
    }
    Ok(batch
        .records
        .iter()
        .map(|r| {
            if existing.contains(r.change.email.as_str()) {
                outcome(r.index, &r.change, OutcomeCode::Updated, None)
            } else {
                outcome(r.index, &r.change, OutcomeCode::NotFound, Some("no contact with this email in the account"))
            }
        })
        .collect())
}

async fn upsert(
    database: &Database,
    account: &AccountId,
    batch: &Batch,
    now: DateTime,
) -> Result<Vec<RecordOutcome>, ApplyError> {
    let statements: Vec<Document> = batch
        .records
        .iter()
        .map(|r| {
            doc! {
                "q": key(account, &r.change),
                "u": {
                    "$set": managed_fields(&r.change, now),
                    "$setOnInsert": { "createdAt": now },
                },
                "upsert": true,
            }
        })
        .collect();
    let reply = run_updates(database, statements).await?;
    let created: HashSet<usize> = reply
        .get_array("upserted")
        .map(|upserted| {
            upserted
                .iter()
                .filter_map(|entry| entry.as_document())
                .map(|entry| number(entry.get("index")) as usize)
                .collect()
        })
        .unwrap_or_default();
    Ok(batch
        .records
        .iter()
        .enumerate()
        .map(|(position, r)| {
            let code = if created.contains(&position) {
                OutcomeCode::Created
            } else {
                OutcomeCode::Updated
            };
            outcome(r.index, &r.change, code, None)
        })
        .collect())
}

async fn create(
    database: &Database,
    account: &AccountId,
    batch: &Batch,
    now: DateTime,
) -> Result<Vec<RecordOutcome>, ApplyError> {
    let documents: Vec<Document> = batch
        .records
        .iter()
        .map(|r| {
            let mut contact = key(account, &r.change);
            contact.extend(managed_fields(&r.change, now));
            contact.insert("createdAt", now);
            contact
        })
        .collect();
    let inserted = database
        .collection::<Document>(CONTACTS)
        .insert_many(documents)
        .ordered(false)
        .await;
    let mut refused = std::collections::HashMap::new();
    if let Err(error) = inserted {
        match *error.kind {
            ErrorKind::InsertMany(ref failure) if failure.write_concern_error.is_none() => {
                for write_error in failure.write_errors.iter().flatten() {
                    refused.insert(write_error.index, (write_error.code, write_error.message.clone()));
                }
            }
            _ => return Err(error.into()),
        }
    }
    Ok(batch
        .records
        .iter()
        .enumerate()
        .map(|(position, r)| match refused.get(&position) {
            None => outcome(r.index, &r.change, OutcomeCode::Created, None),
            Some((DUPLICATE_KEY, _)) => outcome(
                r.index,
                &r.change,
                OutcomeCode::AlreadyExists,
                Some("a contact with this email already exists in the account"),
            ),
            Some((_, message)) => outcome(r.index, &r.change, OutcomeCode::StoreError, Some(message)),
        })
        .collect())
}

async fn delete(
    database: &Database,
    account: &AccountId,
    batch: &Batch,
) -> Result<Vec<RecordOutcome>, ApplyError> {
    let existing = existing_emails(database, account, batch).await?;
    if !existing.is_empty() {
        let emails: Vec<&str> = existing.iter().map(String::as_str).collect();
        database
            .collection::<Document>(CONTACTS)
            .delete_many(doc! { "accountId": account.as_str(), "email": { "$in": emails } })
            .await?;
    }
    Ok(batch
        .records
        .iter()
        .map(|r| {
            if existing.contains(r.change.email.as_str()) {
                outcome(r.index, &r.change, OutcomeCode::Deleted, None)
            } else {
                outcome(r.index, &r.change, OutcomeCode::NotFound, Some("no contact with this email in the account"))
            }
        })
        .collect())
}
