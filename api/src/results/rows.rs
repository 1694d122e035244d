//! The rows of one status of an action's results, by index, a few documents at a time.
//!
//! Failed, skipped and unprocessed rows come from the result buckets, one `_id` range in
//! order of each document's smallest index; succeeded rows from the log buckets the action
//! has already (their ids and smallest indexes first, a small list: one per batch, then the
//! documents a few at a time). Either way documents are merged by index (`Merge`), holding
//! only those whose rows are not all handed out.

use std::collections::{BTreeSet, VecDeque};

use domain::{ActionId, OutcomeStatus};
use futures::TryStreamExt;
use infra::mongo::{LOG_VIEWS, RESULT_VIEWS};
use infra::results::{id_prefix, id_prefix_end, Merge, ResultRow, StoredResultBucket};
use infra::views::StoredLogBucket;
use mongodb::bson::{doc, Document};
use mongodb::options::FindOptions;
use mongodb::Database;

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
    database: Database,
    action: ActionId,
    source: Source,
    merge: Merge,
    finished: bool,
}

enum Source {
    /// Result buckets after this `_id`, up to `end`.
    Results { after: String, end: String },
    /// The log buckets holding succeeded lines, by smallest index: their ids.
    Logs(VecDeque<String>),
}

impl RowReader {
    pub async fn open(
        database: &Database,
        action: ActionId,
        status: OutcomeStatus,
    ) -> Result<Self, ReadError> {
        let source = if status == OutcomeStatus::Succeeded {
            Source::Logs(succeeded_buckets(database, action).await?)
        } else {
            let prefix = id_prefix(action, status);
            Source::Results {
                end: id_prefix_end(&prefix),
                after: prefix,
            }
        };
        Ok(Self {
            database: database.clone(),
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
                Source::Results { after, end } => {
                    read_results(&self.database, after, end, &mut self.merge).await?
                }
                Source::Logs(ids) => read_logs(&self.database, ids, &mut self.merge).await?,
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

/// Pushes the next documents of the range into `merge`; false when none was left.
async fn read_results(
    database: &Database,
    after: &mut String,
    end: &str,
    merge: &mut Merge,
) -> Result<bool, ReadError> {
    let options = FindOptions::builder()
        .sort(doc! { "_id": 1 })
        .limit(DOCS_PER_READ as i64)
        // All of them in the first reply: no `getMore` to lose.
        .batch_size(DOCS_PER_READ as u32)
        .build();
    let buckets: Vec<StoredResultBucket> = database
        .collection::<StoredResultBucket>(RESULT_VIEWS)
        .find(doc! { "_id": { "$gt": after.as_str(), "$lt": end } })
        .with_options(options)
        .await?
        .try_collect()
        .await?;
    for bucket in &buckets {
        let rows = bucket
            .rows()
            .map_err(|error| ReadError::Corrupt(format!("{}: {error}", bucket.id)))?;
        merge.push(bucket.min_index, rows);
    }
    match buckets.last() {
        Some(last) => {
            after.clone_from(&last.id);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Pushes the succeeded lines of the next log buckets into `merge`.
async fn read_logs(
    database: &Database,
    ids: &mut VecDeque<String>,
    merge: &mut Merge,
) -> Result<bool, ReadError> {
    if ids.is_empty() {
        return Ok(false);
    }
    let wanted: Vec<String> = ids.drain(..ids.len().min(DOCS_PER_READ)).collect();
    let mut buckets: Vec<StoredLogBucket> = database
        .collection::<StoredLogBucket>(LOG_VIEWS)
        .find(doc! { "_id": { "$in": &wanted } })
        .batch_size(DOCS_PER_READ as u32)
        .await?
        .try_collect()
        .await?;
    buckets.sort_by_key(|bucket| bucket.min_index);
    for bucket in buckets {
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
    }
    Ok(true)
}

/// The ids of the action's log buckets that hold succeeded lines, by smallest index: an
/// `_id` range (`<action>:<seq>`), paged, with only the id and smallest index read.
async fn succeeded_buckets(
    database: &Database,
    action: ActionId,
) -> Result<VecDeque<String>, ReadError> {
    let logs = database.collection::<Document>(LOG_VIEWS);
    let end = format!("{action};");
    let mut after = format!("{action}:");
    let mut found: Vec<(i64, String)> = Vec::new();
    loop {
        let options = FindOptions::builder()
            .sort(doc! { "_id": 1 })
            .limit(IDS_PER_READ as i64)
            .batch_size(IDS_PER_READ as u32)
            .projection(doc! { "_id": 1, "minIndex": 1 })
            .build();
        let page: Vec<Document> = logs
            .find(doc! {
                "_id": { "$gt": after.as_str(), "$lt": end.as_str() },
                "statuses": OutcomeStatus::Succeeded.as_str(),
            })
            .with_options(options)
            .await?
            .try_collect()
            .await?;
        let full = page.len() == IDS_PER_READ;
        for document in page {
            let id = document
                .get_str("_id")
                .map_err(|error| ReadError::Corrupt(error.to_string()))?
                .to_owned();
            let min_index = match document.get("minIndex") {
                Some(mongodb::bson::Bson::Int32(index)) => i64::from(*index),
                Some(mongodb::bson::Bson::Int64(index)) => *index,
                _ => return Err(ReadError::Corrupt(format!("{id} has no minIndex"))),
            };
            after.clone_from(&id);
            found.push((min_index, id));
        }
        if !full {
            break;
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, id)| id).collect())
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
    let buckets = database.collection::<Document>(RESULT_VIEWS);
    let mut after = id_prefix(action, status);
    let end = id_prefix_end(&after);
    let mut names = BTreeSet::new();
    loop {
        let options = FindOptions::builder()
            .sort(doc! { "_id": 1 })
            .limit(IDS_PER_READ as i64)
            .batch_size(IDS_PER_READ as u32)
            .projection(doc! { "_id": 1, "fields": 1 })
            .build();
        let page: Vec<Document> = buckets
            .find(doc! { "_id": { "$gt": after.as_str(), "$lt": end.as_str() } })
            .with_options(options)
            .await?
            .try_collect()
            .await?;
        let full = page.len() == IDS_PER_READ;
        for document in page {
            if let Ok(fields) = document.get_array("fields") {
                for name in fields.iter().filter_map(|name| name.as_str()) {
                    if names.len() < MAX_FIELD_COLUMNS || names.contains(name) {
                        names.insert(name.to_owned());
                    }
                }
            }
            if let Ok(id) = document.get_str("_id") {
                id.clone_into(&mut after);
            }
        }
        if !full {
            break;
        }
    }
    Ok(names
        .into_iter()
        .filter(|name| !domain::results::is_result_column(name))
        .collect())
}
