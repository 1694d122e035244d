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
    let contacts = database.collection::<Document>(collection);
    contacts.drop().await?;
    contacts
        .create_index(
            IndexModel::builder()
                .keys(doc! { "accountId": 1, "email": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;
    // Generated before the clock starts: the baseline times the client's writes, not the
    // benchmark's data generator.
    let contacts_to_write: Vec<_> = data
        .unique_indexes()
        .map(|index| data.contact(index))
        .collect();
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
