//! MongoDB connection and the collections the platform owns.
//!
//! Only features that behave the same on MongoDB 6-8 and FerretDB 1.24 are used: no
//! transactions, no pipeline updates, no `bulkWrite` command (see
//! docs/decisions/0040-only-what-mongodb-6-8-and-ferretdb-share.md).

use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};

use crate::config::DEFAULT_DATABASE;

pub const CONTACTS: &str = "contacts";
pub const ACTION_VIEWS: &str = "bulk_actions";
/// One document per settling event (`views::StoredLogBucket`).
pub const LOG_VIEWS: &str = "bulk_action_log_buckets";
/// The rows of result files that did not succeed, per event and status
/// (`results::StoredResultBucket`); read by `_id` range only.
pub const RESULT_VIEWS: &str = "bulk_action_result_buckets";
/// Events of actions past the retention period, moved out of Redis (`views::ArchivedEvent`).
/// Not a view: a replay reads it and never drops it.
pub const EVENT_ARCHIVE: &str = "bulk_action_event_archive";
/// One document per record, before log lines were bucketed; dropped by a replay.
pub const LEGACY_LOG_VIEWS: &str = "bulk_action_logs";

pub async fn connect(uri: &str, app_name: &str) -> mongodb::error::Result<Database> {
    let mut options = ClientOptions::parse(uri).await?;
    options.app_name = Some(app_name.to_owned());
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.connect_timeout = Some(Duration::from_secs(3));
    let database = options
        .default_database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    Ok(Client::with_options(options)?.database(&database))
}

/// Closes the client's connections and monitors before the process ends: a driver task
/// left running while the runtime shuts down can panic on its closed channels. Does not
/// wait for cursors or sessions still alive elsewhere.
pub async fn close(database: &Database) {
    database.client().clone().shutdown().immediate(true).await;
}

const DUPLICATE_KEY: i32 = 11000;

/// Unordered insert in which documents that exist already (the same derived `_id`) are no
/// error: how derived documents are written idempotently.
pub async fn insert_new<T>(
    collection: &mongodb::Collection<T>,
    documents: Vec<T>,
) -> mongodb::error::Result<()>
where
    T: serde::Serialize + Send + Sync,
{
    if documents.is_empty() {
        return Ok(());
    }
    match collection.insert_many(documents).ordered(false).await {
        Ok(_) => Ok(()),
        Err(error) => match *error.kind {
            mongodb::error::ErrorKind::InsertMany(ref failure)
                if failure.write_concern_error.is_none()
                    && failure
                        .write_errors
                        .iter()
                        .flatten()
                        .all(|e| e.code == DUPLICATE_KEY) =>
            {
                Ok(())
            }
            _ => Err(error),
        },
    }
}

pub async fn ping(database: &Database) -> mongodb::error::Result<()> {
    database.run_command(doc! { "ping": 1 }).await.map(|_| ())
}

/// The unique index that makes each entity's natural key (a contact's email, a company's
/// domain, ...) one document per account. Made by the consumer, the only writer of entity
/// documents, at start.
pub async fn ensure_entity_indexes(database: &Database) -> mongodb::error::Result<()> {
    for entity in domain::EntityType::ALL {
        let spec = entity.spec();
        let partial = if entity == domain::EntityType::Contact {
            // As the first build made it, whole (no partial filter): an index of the same
            // name with other options would be refused.
            Partial::No
        } else {
            Partial::WhereText
        };
        ensure_unique(database, spec.collection, spec.natural_key, partial).await?;
    }
    Ok(())
}

/// The unique index of an external id slot (`domain::fields::slot_field`) of an entity
/// collection, made by the consumer before the first batch that writes or matches it: at
/// most `MAX_UNIQUE_FIELDS` per collection, over fields only the platform writes. Not made
/// up front: on FerretDB every index is rewritten by every update of a document, so an
/// index nobody uses slows every write (measured, docs/benchmarks.md).
pub async fn ensure_slot_index(
    database: &Database,
    collection: &str,
    slot: u8,
) -> mongodb::error::Result<()> {
    let field = domain::fields::slot_field(slot);
    ensure_unique(database, collection, &field, Partial::WhereText).await
}

pub fn unique_index_name(field: &str) -> String {
    format!("accountId_{field}_unique")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partial {
    No,
    /// Only documents where the field is text: documents the platform did not make may
    /// lack it, and MongoDB would index each as `null` and refuse the second.
    WhereText,
}

/// Code of a server that does not know an option (FerretDB 1.24: `partialFilterExpression`).
const NOT_IMPLEMENTED: i32 = 238;

async fn ensure_unique(
    database: &Database,
    collection: &str,
    field: &str,
    partial: Partial,
) -> mongodb::error::Result<()> {
    let collection = database.collection::<mongodb::bson::Document>(collection);
    let model = |partial: Partial| {
        let mut options = IndexOptions::builder()
            .unique(true)
            .name(unique_index_name(field))
            .build();
        if partial == Partial::WhereText {
            options.partial_filter_expression = Some(doc! { field: { "$type": "string" } });
        }
        IndexModel::builder()
            .keys(doc! { "accountId": 1, field: 1 })
            .options(options)
            .build()
    };
    match collection.create_index(model(partial)).await {
        Ok(_) => Ok(()),
        // FerretDB has no partial indexes, and needs none: its unique indexes skip
        // documents without the field (measured, decision 0051).
        Err(error)
            if partial == Partial::WhereText
                && matches!(*error.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == NOT_IMPLEMENTED) =>
        {
            collection
                .create_index(model(Partial::No))
                .await
                .map(|_| ())
        }
        Err(error) => Err(error),
    }
}

/// Indexes behind the list and logs queries. Created by the projector, the only writer of
/// views.
pub async fn ensure_view_indexes(database: &Database) -> mongodb::error::Result<()> {
    let actions = database.collection::<mongodb::bson::Document>(ACTION_VIEWS);
    actions
        .create_index(
            IndexModel::builder()
                .keys(doc! { "accountId": 1, "createdAt": -1 })
                .build(),
        )
        .await?;
    actions
        .create_index(IndexModel::builder().keys(doc! { "createdAt": -1 }).build())
        .await?;
    // An account stream's starting set (its unfinished actions, newest first), and the
    // list filtered by status: without it, an account with many finished actions is
    // scanned whole.
    actions
        .create_index(
            IndexModel::builder()
                .keys(doc! { "accountId": 1, "status": 1, "createdAt": -1 })
                .build(),
        )
        .await?;
    let logs = database.collection::<mongodb::bson::Document>(LOG_VIEWS);
    logs.create_index(
        IndexModel::builder()
            .keys(doc! { "actionId": 1, "minIndex": 1 })
            .build(),
    )
    .await?;
    logs.create_index(
        IndexModel::builder()
            .keys(doc! { "actionId": 1, "statuses": 1, "minIndex": 1 })
            .build(),
    )
    .await?;
    database
        .collection::<mongodb::bson::Document>(EVENT_ARCHIVE)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "actionId": 1, "seq": 1 })
                .build(),
        )
        .await?;
    Ok(())
}

/// Codes with which a server says "not now" rather than "not this": shutting down,
/// stepping down or not primary, interrupted, network trouble or a time limit on its side
/// (the driver's retryable codes, plus time limits and write conflicts).
const TRANSIENT_CODES: [i32; 17] = [
    6, 7, 50, 89, 91, 112, 134, 189, 262, 9001, 10058, 10107, 11600, 11601, 11602, 13435, 13436,
];

/// The server could not be reached or could not serve anyone right now (down, restarting,
/// network, not primary, shutting down): waiting is right, and the same write will go
/// through later. Anything else is taken as the server's answer about this particular
/// write (refused, invalid, a document over the 16 MiB limit that the driver will not
/// even send), which the same write would get again.
pub fn is_outage(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    if error.contains_label("RetryableWriteError")
        || error.contains_label("TransientTransactionError")
    {
        return true;
    }
    match &*error.kind {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown
        | ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::Command(command) => TRANSIENT_CODES.contains(&command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => TRANSIENT_CODES.contains(&write.code),
        ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_some()
                || failure
                    .write_errors
                    .iter()
                    .flatten()
                    .any(|write| TRANSIENT_CODES.contains(&write.code))
        }
        _ => false,
    }
}

/// What the server said about a failed write, without the driver's dump of the raw reply:
/// `code (name): message`, or the error itself when the server said nothing.
pub fn server_message(error: &mongodb::error::Error) -> String {
    use mongodb::error::{ErrorKind, WriteFailure};
    let (code, name, message) = match &*error.kind {
        ErrorKind::Command(command) => (command.code, command.code_name.as_str(), &command.message),
        ErrorKind::Write(WriteFailure::WriteError(write)) => (
            write.code,
            write.code_name.as_deref().unwrap_or(""),
            &write.message,
        ),
        ErrorKind::InsertMany(failure) => match failure.write_errors.iter().flatten().next() {
            Some(write) => (write.code, "", &write.message),
            None => return error.to_string(),
        },
        _ => return error.to_string(),
    };
    format!("{code} ({name}): {message}")
}
