//! Retention: the events of actions that finished long ago leave Redis for MongoDB.
//!
//! Event streams are never trimmed (replay reads them), so Redis would grow with every
//! action ever run: about 67 bytes per record (docs/benchmarks.md). With
//! `EVENT_RETENTION_DAYS` set, an action finished more than that long ago, and whose views
//! have folded every one of its events, has its events copied verbatim into the
//! `bulk_action_event_archive` collection; then a script drops the stream, the meta and
//! what is left of its batches, keeping a tombstone meta (account, types, counts,
//! `archived`) so that reads, control commands and idempotent resubmissions behave as
//! before. A replay folds archived actions from the archive, with the same positions and
//! the same decoding, so it rebuilds the same views.

use domain::{ActionId, ActionStatus, Timestamp};
use futures::TryStreamExt;
use infra::mongo::{ACTION_VIEWS, EVENT_ARCHIVE};
use infra::views::ArchivedEvent;
use infra::Projection;
use mongodb::bson::{doc, Document};
use mongodb::Database;

use crate::ProjectorError;

/// Events copied per round trip: a settled batch's event carries up to a batch of
/// outcomes, so pages stay small.
const EVENTS_PER_COPY: usize = 32;
/// Well under MongoDB's 16 MiB document limit, with room for the envelope.
const ARCHIVED_EVENT_MAX_BYTES: usize = 12 << 20;
const CANDIDATES_PER_PAGE: i64 = 1000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub actions: usize,
    pub events: u64,
}

/// Archives every action that finished before `finished_before` and is fully projected.
pub async fn archive_finished(
    store: &Projection,
    database: &Database,
    finished_before: Timestamp,
    now: Timestamp,
) -> Result<RetentionReport, ProjectorError> {
    let mut report = RetentionReport::default();
    for view in finished_views(database, finished_before).await? {
        let Some(action) = view.get_str("_id").ok().and_then(ActionId::parse) else {
            continue;
        };
        let Some(projected_seq) = infra::views::last_seq_of(&view) else {
            continue;
        };
        let Some(meta) = store.meta(action).await? else {
            continue;
        };
        // A view that has not folded every event yet would lose the rest.
        if meta.archived || meta.head_seq != projected_seq {
            continue;
        }
        report.events += archive_action(store, database, action, meta.head_seq, now).await?;
        report.actions += 1;
    }
    if report.actions > 0 {
        tracing::info!(
            actions = report.actions,
            events = report.events,
            "archived the events of finished actions"
        );
    }
    Ok(report)
}

/// The views (`_id`, `lastSeq`) of actions that finished before `finished_before`.
/// Times are stored as fixed-width RFC 3339 text, so text order is time order and the
/// store picks the old ones. Paged by `_id`, each page in one reply: no `getMore` to lose.
async fn finished_views(
    database: &Database,
    finished_before: Timestamp,
) -> Result<Vec<Document>, ProjectorError> {
    let finished: Vec<&str> = [
        ActionStatus::Completed,
        ActionStatus::Failed,
        ActionStatus::Cancelled,
    ]
    .iter()
    .map(ActionStatus::as_str)
    .collect();
    let views = database.collection::<Document>(ACTION_VIEWS);
    let cutoff = finished_before.to_string();
    let mut candidates: Vec<Document> = Vec::new();
    loop {
        let mut filter = doc! {
            "status": { "$in": &finished },
            "completedAt": { "$lt": &cutoff },
        };
        if let Some(last) = candidates.last().and_then(|view| view.get_str("_id").ok()) {
            filter.insert("_id", doc! { "$gt": last });
        }
        let page: Vec<Document> = views
            .find(filter)
            .projection(doc! { "_id": 1, "lastSeq": 1 })
            .sort(doc! { "_id": 1 })
            .limit(CANDIDATES_PER_PAGE)
            .batch_size(CANDIDATES_PER_PAGE as u32)
            .await?
            .try_collect()
            .await?;
        let full = page.len() as i64 == CANDIDATES_PER_PAGE;
        candidates.extend(page);
        if !full {
            return Ok(candidates);
        }
    }
}

/// Copies the action's events into the archive, checks that all `head_seq` of them are
/// there, then lets Redis forget them. Returns the events archived (0 if it was not).
async fn archive_action(
    store: &Projection,
    database: &Database,
    action: ActionId,
    head_seq: u64,
    now: Timestamp,
) -> Result<u64, ProjectorError> {
    let archive = database.collection::<ArchivedEvent>(EVENT_ARCHIVE);
    let mut after: Option<String> = None;
    loop {
        let page = store
            .read_raw(action, after.as_deref(), EVENTS_PER_COPY)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.position.clone());
        if let Some(huge) = page
            .iter()
            .find(|event| event.data.len() > ARCHIVED_EVENT_MAX_BYTES)
        {
            // Only a build that did not bound echoed texts wrote such an event: it stays in
            // Redis rather than fail every sweep on MongoDB's 16 MiB document limit.
            tracing::warn!(%action, seq = huge.seq, bytes = huge.data.len(), "event too large to archive; keeping the events in redis");
            return Ok(0);
        }
        let documents: Vec<ArchivedEvent> = page
            .into_iter()
            .map(|event| ArchivedEvent::new(action, event))
            .collect();
        infra::mongo::insert_new(&archive, documents).await?;
    }
    let archived = archive
        .count_documents(doc! { "actionId": action.to_string() })
        .await?;
    if archived < head_seq {
        tracing::warn!(%action, archived, head_seq, "archive incomplete; keeping the events in redis");
        return Ok(0);
    }
    if store.forget_archived(action, head_seq, now).await? {
        Ok(head_seq)
    } else {
        Ok(0)
    }
}
