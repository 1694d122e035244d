//! Bringing one action's views up to date with its stream.
//!
//! Idempotent by construction: the view carries the stream position and seq of the last
//! event folded into it, its update is guarded by `lastSeq < new`, and log lines have ids
//! derived from (action, event seq), result rows from (action, status, index, seq). Projecting the same events twice, from two
//! projectors at once, or from a full replay ends in the same documents.

use domain::view::apply_event;
use domain::{ActionId, ProjectionError};
use futures::TryStreamExt;
use infra::mongo::{ACTION_VIEWS, EVENT_ARCHIVE, LOG_VIEWS, RESULT_VIEWS};
use infra::results::StoredResultBucket;
use infra::views::{ArchivedEvent, StoredActionView, StoredLogBucket};
use infra::{EventStore, StoredEvent};
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::FindOptions;
use mongodb::Database;

use crate::ProjectorError;

/// Events read per round trip: BatchProcessed events carry a batch's outcomes (up to 10,000
/// records) and kept records, so pages are kept small (and end at 4 MiB,
/// `infra::event_store::PAGE_MAX_BYTES`) to bound memory whatever the action's size.
const EVENTS_PER_PAGE: usize = 16;
const DUPLICATE_KEY: i32 = 11000;

/// Where an action's events are read from: its Redis stream, or, past the retention
/// period, the archive. Both give the same events with the same positions.
trait EventSource {
    async fn read(
        &self,
        action: ActionId,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, ProjectorError>;
}

impl EventSource for EventStore {
    async fn read(
        &self,
        action: ActionId,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, ProjectorError> {
        Ok(EventStore::read(self, action, after, count).await?)
    }
}

struct Archive<'a>(&'a Database);

impl EventSource for Archive<'_> {
    async fn read(
        &self,
        action: ActionId,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, ProjectorError> {
        let archive = self.0.collection::<ArchivedEvent>(EVENT_ARCHIVE);
        let after_seq = match after {
            None => 0,
            Some(position) => archive
                .find_one(doc! { "actionId": action.to_string(), "position": position })
                .await?
                .map(|archived| archived.event.seq)
                .ok_or_else(|| {
                    infra::StoreError::Corrupt(format!(
                        "archive of {action} lacks position {position}"
                    ))
                })?,
        };
        let options = FindOptions::builder()
            .sort(doc! { "seq": 1 })
            .limit(count as i64)
            .batch_size(count as u32)
            .build();
        let mut cursor = archive
            .find(doc! { "actionId": action.to_string(), "seq": { "$gt": after_seq as i64 } })
            .with_options(options)
            .await?;
        // Bounded by bytes as a page of the stream is (`read_page.lua`); the first always.
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some(archived) = cursor.try_next().await? {
            bytes += archived.event.data.len();
            if !page.is_empty() && bytes > infra::event_store::PAGE_MAX_BYTES {
                break;
            }
            page.push(archived.event.decode(action)?);
        }
        Ok(page)
    }
}

/// Brings the views of `action` up to date with its stream. `Ok(Some(error))`: the store
/// refuses them (or the events cannot be folded) in a way that retrying will not cure, and
/// the views stop before `error.seq`. `Err`: an outage, to be waited out.
pub async fn project_action(
    store: &EventStore,
    database: &Database,
    action: ActionId,
) -> Result<Option<ProjectionError>, ProjectorError> {
    project_or_refuse(store, database, action).await
}

/// `project_action` for an action whose events are archived (see `retention`).
pub async fn project_archived(
    database: &Database,
    action: ActionId,
) -> Result<Option<ProjectionError>, ProjectorError> {
    project_or_refuse(&Archive(database), database, action).await
}

async fn project_or_refuse(
    source: &impl EventSource,
    database: &Database,
    action: ActionId,
) -> Result<Option<ProjectionError>, ProjectorError> {
    let mut reached = 0;
    match project_from(source, database, action, EVENTS_PER_PAGE, &mut reached).await {
        Ok(()) => return Ok(None),
        Err(error) if !error.is_permanent() => return Err(error),
        Err(_) => {}
    }
    // Again one event at a time from where the pages stopped: the views get as far as they
    // can, and the error names the very event that cannot be written.
    let error = match project_from(source, database, action, 1, &mut reached).await {
        Ok(()) => return Ok(None),
        Err(error) if !error.is_permanent() => return Err(error),
        Err(error) => error,
    };
    // A server that cannot answer a ping is down, whatever the write's error said.
    if matches!(error, ProjectorError::Mongo(_)) {
        infra::mongo::ping(database).await?;
    }
    Ok(Some(error.describe(reached + 1, infra::clock::now())))
}

/// Folds and writes pages of `page` events from the view's checkpoint to the end of the
/// stream; `reached` follows the seq of the last event written.
async fn project_from(
    source: &impl EventSource,
    database: &Database,
    action: ActionId,
    page: usize,
    reached: &mut u64,
) -> Result<(), ProjectorError> {
    let views = database.collection::<StoredActionView>(ACTION_VIEWS);
    let mut stored = views.find_one(doc! { "_id": action.to_string() }).await?;
    *reached = stored.as_ref().map_or(0, |s| s.view.last_seq);
    loop {
        let checkpoint = stored.as_ref().map(|s| s.checkpoint.as_str());
        let events = source.read(action, checkpoint, page).await?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        let position = last.position.clone();
        let previous_seq = stored.as_ref().map_or(0, |s| s.view.last_seq);
        let mut view = stored.as_ref().map(|s| s.view.clone());
        let mut log_buckets = Vec::new();
        let mut result_buckets = Vec::new();
        for event in &events {
            view = apply_event(view, &event.envelope)?;
            if event.envelope.seq > previous_seq {
                if let Some(folded) = &view {
                    let payload = &event.envelope.payload;
                    log_buckets.extend(StoredLogBucket::for_event(
                        action,
                        folded.account_id.as_str(),
                        event.envelope.seq,
                        payload.record_outcomes(),
                    ));
                    result_buckets.extend(StoredResultBucket::for_event(
                        action,
                        event.envelope.seq,
                        payload.record_outcomes(),
                        payload.submitted_records(),
                    ));
                }
            }
        }
        let Some(mut view) = view else {
            return Ok(());
        };
        view.projection_error = None;
        write_logs(database, log_buckets, result_buckets).await?;
        let next = StoredActionView::new(view, position);
        write_view(database, stored.is_none(), &next).await?;
        *reached = next.view.last_seq;
        stored = Some(next);
        // Not at a short page: a page also ends before an event that would take it past
        // `PAGE_MAX_BYTES`. Only an empty page is the end.
    }
}

/// Log lines and result rows before the view: a crash in between re-inserts buckets that
/// already exist, which the unique `_id` turns into no-ops.
async fn write_logs(
    database: &Database,
    buckets: Vec<StoredLogBucket>,
    results: Vec<StoredResultBucket>,
) -> Result<(), ProjectorError> {
    let logs = database.collection::<StoredLogBucket>(LOG_VIEWS);
    infra::mongo::insert_new(&logs, buckets).await?;
    let rows = database.collection::<StoredResultBucket>(RESULT_VIEWS);
    Ok(infra::mongo::insert_new(&rows, results).await?)
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
            // A view written again is projected again: its quarantine, if any, is over.
            doc! { "$set": fields, "$unset": { "projectionError": "" } },
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
