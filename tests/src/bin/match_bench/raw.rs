//! The raw client: the same changes written straight into the server, one document per
//! request or 32 statements per command, with a chosen number of requests in flight.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

/// Statements per command, as the consumer sends them by default
/// (`MONGO_STATEMENTS_PER_COMMAND`); fixed whatever the platform's run uses, since the
/// raw client's best of every shape is the baseline.
const STATEMENTS_PER_COMMAND: usize = 32;

/// Seeded documents, each made again from its number alone.
pub struct Seeded {
    pub documents: u64,
    /// Fixed per run so that the platform's and the raw collection hold the same ids.
    base: [u8; 4],
}

impl Seeded {
    pub fn new(documents: u64) -> Self {
        Self {
            documents,
            base: *b"mtch",
        }
    }

    pub fn id(&self, i: u64) -> ObjectId {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&self.base);
        bytes[4..].copy_from_slice(&i.to_be_bytes());
        ObjectId::from_bytes(bytes)
    }

    pub fn email(&self, i: u64) -> String {
        format!("user{i}@match.example")
    }

    pub fn sf_id(&self, i: u64) -> String {
        format!("SF{i:08}")
    }

    fn document(&self, account: &str, i: u64, now: DateTime) -> Document {
        doc! {
            "_id": self.id(i), "accountId": account, "email": self.email(i),
            "name": format!("Seeded {i}"), "sfId": self.sf_id(i), "status": "seeded",
            // As the platform keeps an external id it wrote: in the field's slot too (the
            // bench's one unique field takes the first).
            "_externalId1": self.sf_id(i),
            "createdAt": now, "updatedAt": now,
        }
    }
}

pub async fn seed(
    database: &Database,
    collection: &str,
    account: &str,
    seeded: &Seeded,
) -> Result<()> {
    let documents: Vec<u64> = (0..seeded.documents).collect();
    put_back(database, collection, account, seeded, &documents).await
}

/// Inserts the chosen documents as seeded (after a delete run).
pub async fn put_back(
    database: &Database,
    collection: &str,
    account: &str,
    seeded: &Seeded,
    chosen: &[u64],
) -> Result<()> {
    let target = database.collection::<Document>(collection);
    let now = DateTime::now();
    for chunk in chosen.chunks(1000) {
        let documents: Vec<Document> = chunk
            .iter()
            .map(|&i| seeded.document(account, i, now))
            .collect();
        target.insert_many(documents).ordered(false).await?;
    }
    Ok(())
}

/// An empty collection with the contacts' unique index.
pub async fn fresh_collection(database: &Database, name: &str) -> Result<()> {
    database.collection::<Document>(name).drop().await?;
    unique_index(database, name, "email").await
}

pub async fn unique_index(database: &Database, collection: &str, field: &str) -> Result<()> {
    database
        .collection::<Document>(collection)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "accountId": 1, field: 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `update_one` / `delete_one`: a request per document.
    OnePerRequest,
    /// `update` / `delete` commands of 32 statements.
    Statements32,
}

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::OnePerRequest, Shape::Statements32];
}

#[derive(Debug, Clone, Copy)]
pub enum Key {
    /// `_id` alone: the cheapest filter a client can send, and one a multi-tenant service
    /// cannot (an ObjectId is guessable; the account must be in the filter).
    Id,
    /// `_id` and the account, as the platform's filter is.
    IdInAccount,
    /// The external id (`sfId`) and the account: the upsert's filter.
    ExternalId,
    /// The email and the account, as a multi-tenant client must (the key first: FerretDB
    /// tests a filter's fields in order, and the key rules out more documents).
    Email,
}

pub struct Job<'a> {
    pub database: &'a Database,
    pub collection: &'a str,
    pub account: &'a str,
    pub seeded: &'a Seeded,
    pub chosen: &'a [u64],
    pub round: usize,
}

impl Job<'_> {
    pub async fn update_names(
        &self,
        key: Key,
        shape: Shape,
        in_flight: usize,
    ) -> Result<(u64, Duration)> {
        let statements: Vec<Document> = self
            .chosen
            .iter()
            .map(|&i| {
                let filter = match key {
                    Key::Id => doc! { "_id": self.seeded.id(i) },
                    Key::IdInAccount => doc! { "_id": self.seeded.id(i), "accountId": self.account },
                    Key::ExternalId => doc! { "sfId": self.seeded.sf_id(i), "accountId": self.account },
                    Key::Email => doc! { "email": self.seeded.email(i), "accountId": self.account },
                };
                doc! { "q": filter, "u": { "$set": { "name": format!("Raw {i} r{}", self.round), "updatedAt": DateTime::now() } } }
            })
            .collect();
        self.run("update", "updates", statements, shape, in_flight)
            .await
    }

    pub async fn upsert_by_sf_id(&self, shape: Shape, in_flight: usize) -> Result<(u64, Duration)> {
        let statements: Vec<Document> = self
            .chosen
            .iter()
            .map(|&i| {
                doc! {
                    "q": { "sfId": self.seeded.sf_id(i), "accountId": self.account },
                    "u": {
                        "$set": { "name": format!("Raw {i} r{}", self.round), "updatedAt": DateTime::now() },
                        "$setOnInsert": { "email": self.seeded.email(i) },
                    },
                    "upsert": true,
                }
            })
            .collect();
        self.run("update", "updates", statements, shape, in_flight)
            .await
    }

    pub async fn delete_by_id(
        &self,
        key: Key,
        shape: Shape,
        in_flight: usize,
    ) -> Result<(u64, Duration)> {
        let statements: Vec<Document> = self
            .chosen
            .iter()
            .map(|&i| {
                let filter = match key {
                    Key::IdInAccount => {
                        doc! { "_id": self.seeded.id(i), "accountId": self.account }
                    }
                    _ => doc! { "_id": self.seeded.id(i) },
                };
                doc! { "q": filter, "limit": 1 }
            })
            .collect();
        self.run("delete", "deletes", statements, shape, in_flight)
            .await
    }

    /// Sends the statements as `command`s of one or 32, `in_flight` at once; returns the
    /// documents matched (`n`) and the time.
    async fn run(
        &self,
        command: &str,
        list: &str,
        statements: Vec<Document>,
        shape: Shape,
        in_flight: usize,
    ) -> Result<(u64, Duration)> {
        let per_command = match shape {
            Shape::OnePerRequest => 1,
            Shape::Statements32 => STATEMENTS_PER_COMMAND,
        };
        let started = Instant::now();
        let done = futures::stream::iter(statements.chunks(per_command))
            .map(|chunk| {
                let database = self.database.clone();
                let request =
                    doc! { command: self.collection, list: chunk.to_vec(), "ordered": false };
                async move {
                    let reply = database.run_command(request).await?;
                    anyhow::Ok(match reply.get("n") {
                        Some(Bson::Int32(n)) => *n as u64,
                        Some(Bson::Int64(n)) => *n as u64,
                        _ => 0,
                    })
                }
            })
            .buffer_unordered(in_flight.max(1))
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await?;
        Ok((done, started.elapsed()))
    }
}
