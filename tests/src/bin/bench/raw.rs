//! The raw store limit: the records the platform keeps, written straight into the same
//! server by a client that does nothing else, in unordered batches of the platform's batch
//! size, with several batches in flight.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

use crate::data::Dataset;

/// Inserts every unique record of `data` into a fresh `collection` with the contacts'
/// unique index, as the consumer inserts new contacts (same fields). Returns records and
/// time.
pub async fn insert_all(
    database: &Database,
    data: &Dataset,
    collection: &str,
    batch_size: usize,
    in_flight: usize,
) -> Result<(u64, Duration)> {
    let account = "raw";
    fresh_collection(database, collection).await?;
    let contacts = database.collection::<Document>(collection);
    let contacts_to_write = data.kept_contacts();
    let started = Instant::now();
    let written = futures::stream::iter(contacts_to_write.chunks(batch_size))
        .map(|chunk| {
            let now = DateTime::now();
            let documents: Vec<Document> = chunk
                .iter()
                .map(|(email, name, age, status)| {
                    doc! {
                        "accountId": account, "email": email, "name": name, "age": age,
                        "status": status, "updatedAt": now, "createdAt": now,
                        "createdBy": "raw-baseline",
                    }
                })
                .collect();
            let contacts = contacts.clone();
            async move {
                let count = documents.len() as u64;
                contacts.insert_many(documents).ordered(false).await?;
                anyhow::Ok(count)
            }
        })
        .buffer_unordered(in_flight.max(1))
        .try_fold(0u64, |sum, count| async move { Ok(sum + count) })
        .await?;
    Ok((written, started.elapsed()))
}

/// Inserts every unique record of `data` as an existing contact of `account` (untimed),
/// with other values than the records carry, so that an update changes every field.
pub async fn seed(
    database: &Database,
    collection: &str,
    data: &Dataset,
    account: &str,
) -> Result<u64> {
    let contacts = database.collection::<Document>(collection);
    let now = DateTime::now();
    let mut seeded = 0;
    let indexes: Vec<u64> = data.unique_indexes().collect();
    for chunk in indexes.chunks(1000) {
        let documents: Vec<Document> = chunk
            .iter()
            .map(|index| {
                let (email, _, _, _) = data.contact(*index);
                doc! {
                    "accountId": account, "email": email, "name": format!("Seeded {index}"),
                    "age": 1_i64, "status": "seeded", "updatedAt": now, "createdAt": now,
                }
            })
            .collect();
        seeded += documents.len() as u64;
        contacts.insert_many(documents).ordered(false).await?;
    }
    Ok(seeded)
}

/// Statements per `update` command, as the consumer sends them (`MONGO_STATEMENTS_PER_COMMAND`):
/// FerretDB 1.24 stopped answering an `update` of 1,000 statements here.
const STATEMENTS_PER_COMMAND: usize = 32;

/// Updates every unique record's contact of `account` in `collection` to the record's
/// values: `update` commands of 32 statements (one per record, by account and email),
/// `in_flight` batches of `batch_size` at once. Returns contacts matched and time.
pub async fn update_all(
    database: &Database,
    collection: &str,
    data: &Dataset,
    account: &str,
    batch_size: usize,
    in_flight: usize,
) -> Result<(u64, Duration)> {
    let contacts_to_write = data.kept_contacts();
    let started = Instant::now();
    let matched = futures::stream::iter(contacts_to_write.chunks(batch_size))
        .map(|chunk| {
            let now = DateTime::now();
            let statements: Vec<Document> = chunk
                .iter()
                .map(|(email, name, age, status)| {
                    doc! {
                        "q": { "accountId": account, "email": email },
                        "u": { "$set": { "name": name, "age": age, "status": status, "updatedAt": now } },
                    }
                })
                .collect();
            let database = database.clone();
            async move {
                let mut matched = 0;
                for statements in statements.chunks(STATEMENTS_PER_COMMAND) {
                    let reply = database
                        .run_command(
                            doc! { "update": collection, "updates": statements, "ordered": false },
                        )
                        .await?;
                    matched += match reply.get("n") {
                        Some(mongodb::bson::Bson::Int32(n)) => *n as u64,
                        Some(mongodb::bson::Bson::Int64(n)) => *n as u64,
                        _ => 0,
                    };
                }
                anyhow::Ok(matched)
            }
        })
        .buffer_unordered(in_flight.max(1))
        .try_fold(0u64, |sum, matched| async move { Ok(sum + matched) })
        .await?;
    Ok((matched, started.elapsed()))
}

/// An empty `name` with the contacts' unique index.
pub async fn fresh_collection(database: &Database, name: &str) -> Result<()> {
    let contacts = database.collection::<Document>(name);
    contacts.drop().await?;
    contacts
        .create_index(
            IndexModel::builder()
                .keys(doc! { "accountId": 1, "email": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;
    Ok(())
}
