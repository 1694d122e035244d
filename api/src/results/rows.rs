//! The rows of one status of an action's results, by index, a few documents at a time.
//!
//! Failed, skipped and unprocessed rows come from the result buckets, one `_id` range in
//! order of each document's smallest index; succeeded rows from the log buckets the action
//! has already, by smallest index. Either way one query, read through its cursor a few
//! documents at a time, merged by index (`Merge`), holding only the documents whose rows
//! are not all handed out.

use std::collections::BTreeSet;

use domain::{ActionId, OutcomeStatus};
use futures::TryStreamExt;
use infra::mongo::{LOG_VIEWS, RESULT_VIEWS};
use infra::results::{id_prefix, id_prefix_end, Merge, ResultRow, StoredResultBucket};
use infra::views::StoredLogBucket;
use mongodb::bson::{doc, Document};
use mongodb::options::FindOptions;
use mongodb::{Cursor, Database};

/// Documents read per round trip: each is at most about 1 MiB.
const DOCS_PER_READ: usize = 8;
/// Id lists read per round trip (projected documents of a few dozen bytes).
const IDS_PER_READ: usize = 1_000;
/// The most field columns a CSV file gets: names come from what records held, and records
/// refused at submission may hold any names. NDJSON rows carry every field.
pub const MAX_FIELD_COLUMNS: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("a stored document is unreadable: {0}")]
    Corrupt(String),
}

pub struct RowReader {
    action: ActionId,
    source: Source,
    merge: Merge,
    finished: bool,
}

/// One query each, read through its cursor: FerretDB filters a range in its own process
/// (it pushes no `$gt` on `_id` down to PostgreSQL), so a query per page would read the
/// collection once per page; one cursor reads it once.
enum Source {
    /// Result buckets of the status, by `_id` (smallest index first).
    Results(Cursor<StoredResultBucket>),
    /// Log buckets holding succeeded lines, by smallest index (`(actionId, minIndex)` is
    /// indexed on MongoDB).
    Logs(Cursor<StoredLogBucket>),
}

impl RowReader {
    pub async fn open(
        database: &Database,
        action: ActionId,
        status: OutcomeStatus,
    ) -> Result<Self, ReadError> {
        let source = if status == OutcomeStatus::Succeeded {
            let options = FindOptions::builder()
                .sort(doc! { "minIndex": 1 })
                .batch_size(DOCS_PER_READ as u32)
                .build();
            Source::Logs(
                database
                    .collection::<StoredLogBucket>(LOG_VIEWS)
                    .find(doc! {
                        "actionId": action.to_string(),
                        "statuses": OutcomeStatus::Succeeded.as_str(),
                    })
                    .with_options(options)
                    .await?,
            )
        } else {
            let prefix = id_prefix(action, status);
            let end = id_prefix_end(&prefix);
            let options = FindOptions::builder()
                .sort(doc! { "_id": 1 })
                .batch_size(DOCS_PER_READ as u32)
                .build();
            Source::Results(
                database
                    .collection::<StoredResultBucket>(RESULT_VIEWS)
                    .find(doc! { "_id": { "$gte": prefix, "$lt": end } })
                    .with_options(options)
                    .await?,
            )
        };
        Ok(Self {
            action,
            source,
            merge: Merge::default(),
            finished: false,
        })
    }

    /// The next rows by index; empty once every row was handed out.
    pub async fn next(&mut self) -> Result<Vec<ResultRow>, ReadError> {
        while !self.finished {
            let more = match &mut self.source {
                Source::Results(cursor) => read_results(cursor, &mut self.merge).await?,
                Source::Logs(cursor) => read_logs(cursor, &mut self.merge).await?,
            };
            let rows = if more {
                self.merge.ready()
            } else {
                self.finished = true;
                std::mem::take(&mut self.merge).finish()
            };
            if !rows.is_empty() {
                return Ok(rows);
            }
        }
        tracing::trace!(action = %self.action, "result rows read");
        Ok(Vec::new())
    }
}

/// Pushes the next documents into `merge`; false when none was left.
async fn read_results(
    cursor: &mut Cursor<StoredResultBucket>,
    merge: &mut Merge,
) -> Result<bool, ReadError> {
    let mut read = false;
    for _ in 0..DOCS_PER_READ {
        let Some(bucket) = cursor.try_next().await? else {
            break;
        };
        let rows = bucket
            .rows()
            .map_err(|error| ReadError::Corrupt(format!("{}: {error}", bucket.id)))?;
        merge.push(bucket.min_index, rows);
        read = true;
    }
    Ok(read)
}

/// Pushes the succeeded lines of the next log buckets into `merge`.
async fn read_logs(
    cursor: &mut Cursor<StoredLogBucket>,
    merge: &mut Merge,
) -> Result<bool, ReadError> {
    let mut read = false;
    for _ in 0..DOCS_PER_READ {
        let Some(bucket) = cursor.try_next().await? else {
            break;
        };
        let lines = bucket
            .lines()
            .map_err(|error| ReadError::Corrupt(format!("{}: {error}", bucket.id)))?;
        let rows = lines
            .into_iter()
            .filter(|line| line.status == OutcomeStatus::Succeeded)
            .map(|line| ResultRow {
                index: line.index,
                key: line.email,
                code: line.code,
                message: line.message,
                record: None,
            })
            .collect();
        merge.push(bucket.min_index, rows);
        read = true;
    }
    Ok(read)
}

/// The field names the records of the status' rows hold, sorted, at most
/// `MAX_FIELD_COLUMNS`: read from the documents' `fields` alone. Succeeded rows keep none.
pub async fn field_names(
    database: &Database,
    action: ActionId,
    status: OutcomeStatus,
) -> Result<Vec<String>, ReadError> {
    if status == OutcomeStatus::Succeeded {
        return Ok(Vec::new());
    }
    let prefix = id_prefix(action, status);
    let end = id_prefix_end(&prefix);
    let options = FindOptions::builder()
        .batch_size(IDS_PER_READ as u32)
        .projection(doc! { "_id": 0, "fields": 1 })
        .build();
    let mut cursor = database
        .collection::<Document>(RESULT_VIEWS)
        .find(doc! { "_id": { "$gte": prefix, "$lt": end } })
        .with_options(options)
        .await?;
    let mut names = BTreeSet::new();
    while let Some(document) = cursor.try_next().await? {
        // JSON text (`StoredResultBucket::fields`).
        let stored: Vec<String> = document
            .get_str("fields")
            .ok()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        for name in stored {
            if names.len() < MAX_FIELD_COLUMNS || names.contains(&name) {
                names.insert(name);
            }
        }
    }
    Ok(names
        .into_iter()
        .filter(|name| !domain::results::is_result_column(name))
        .collect())
}
