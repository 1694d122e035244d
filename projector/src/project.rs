//! Bringing one action's views up to date with its stream.
//!
//! Idempotent by construction: the view carries the stream position and seq of the last
//! event folded into it, its update is guarded by `lastSeq < new`, and log lines have ids
//! derived from (action, event seq). Projecting the same events twice, from two
//! projectors at once, or from a full replay ends in the same documents.

use domain::view::apply_event;
use domain::ActionId;
use infra::mongo::{ACTION_VIEWS, LOG_VIEWS};
use infra::views::{StoredActionView, StoredLogBucket};
use infra::EventStore;
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::Database;

use crate::ProjectorError;

/// Events read per round trip: BatchProcessed events carry a batch's outcomes (up to 10,000
/// records), so pages are kept small enough to bound memory whatever the action's size.
const EVENTS_PER_PAGE: usize = 16;
const DUPLICATE_KEY: i32 = 11000;

pub async fn project_action(
    store: &EventStore,
    database: &Database,
    action: ActionId,
) -> Result<(), ProjectorError> {
    let views = database.collection::<StoredActionView>(ACTION_VIEWS);
    let mut stored = views.find_one(doc! { "_id": action.to_string() }).await?;
    loop {
        let checkpoint = stored.as_ref().map(|s| s.checkpoint.as_str());
        let events = store.read(action, checkpoint, EVENTS_PER_PAGE).await?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        let position = last.position.clone();
        let previous_seq = stored.as_ref().map_or(0, |s| s.view.last_seq);
        let mut view = stored.as_ref().map(|s| s.view.clone());
        let mut log_buckets = Vec::new();
        for event in &events {
            view = apply_event(view, &event.envelope)?;
            if event.envelope.seq > previous_seq {
                if let Some(folded) = &view {
                    log_buckets.extend(StoredLogBucket::new(
                        action,
                        folded.account_id.as_str(),
                        event.envelope.seq,
                        event.envelope.payload.record_outcomes(),
                    ));
                }
            }
        }
        let Some(view) = view else {
            return Ok(());
        };
        write_logs(database, log_buckets).await?;
        let next = StoredActionView::new(view, position);
        write_view(database, stored.is_none(), &next).await?;
        stored = Some(next);
        if events.len() < EVENTS_PER_PAGE {
            return Ok(());
        }
    }
}

/// Log lines before the view: a crash in between re-inserts buckets that already exist,
/// which the unique `_id` turns into no-ops.
async fn write_logs(
    database: &Database,
    buckets: Vec<StoredLogBucket>,
) -> Result<(), ProjectorError> {
    if buckets.is_empty() {
        return Ok(());
    }
    let inserted = database
        .collection::<StoredLogBucket>(LOG_VIEWS)
        .insert_many(buckets)
        .ordered(false)
        .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(error) => match *error.kind {
            ErrorKind::InsertMany(ref failure)
                if failure.write_concern_error.is_none()
                    && failure
                        .write_errors
                        .iter()
                        .flatten()
                        .all(|e| e.code == DUPLICATE_KEY) =>
            {
                Ok(())
            }
            _ => Err(error.into()),
        },
    }
}

/// Inserts the first version of a view, then only ever moves it forward. The guard is on
/// an update without upsert: an upsert with a guard in its filter would insert a duplicate
/// when the guard rejects.
async fn write_view(
    database: &Database,
    first_version: bool,
    next: &StoredActionView,
) -> Result<(), ProjectorError> {
    let views = database.collection::<StoredActionView>(ACTION_VIEWS);
    if first_version {
        match views.insert_one(next).await {
            Ok(_) => return Ok(()),
            Err(error) if is_duplicate_key(&error) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let mut fields: Document = mongodb::bson::to_document(next)?;
    fields.remove("_id");
    views
        .update_one(
            doc! { "_id": &next.id, "lastSeq": { "$lt": next.view.last_seq as i64 } },
            doc! { "$set": fields },
        )
        .await?;
    Ok(())
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    match *error.kind {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref e)) => {
            e.code == DUPLICATE_KEY
        }
        ErrorKind::Command(ref e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}
