//! Reading the action view with "read your own writes".
//!
//! Views are projected asynchronously, so right after a `202` the projector may not have
//! written the view yet, and a stopped or lagging projector may be any number of events
//! behind. The api compares the view's `lastSeq` with the action's head seq in Redis and,
//! when the view lags, folds every missing event itself (the same pure fold the projector
//! runs), a page at a time so that only one page and the view are in memory whatever the
//! lag. A quarantined action (the projector cannot write its views) is shown with its
//! `projectionError`, read from Redis, which is what the projector goes by.

use domain::view::{apply_event, fold};
use domain::{ActionId, ActionView, EventEnvelope, EventPayload, PlanSummary, SCHEMA_VERSION};
use infra::event_store::NewAction;
use infra::mongo::ACTION_VIEWS;
use infra::views::StoredActionView;
use mongodb::bson::doc;
use ulid::Ulid;

use infra::Submissions;
use mongodb::Database;

use crate::error::ApiError;
use crate::AppState;

/// Events read per round trip when folding a lagging view. A settled batch's event carries
/// one outcome per record, so pages stay small; only the folded view outlives a page.
const TAIL_PAGE_EVENTS: usize = 16;

pub async fn action_view(
    state: &AppState,
    action: ActionId,
) -> Result<Option<ActionView>, ApiError> {
    Ok(folded_view(&state.store, &state.database, action)
        .await?
        .map(|folded| folded.view))
}

/// A view with the stream position of the last event folded into it, from which the
/// events after it can be read.
#[derive(Debug, Clone)]
pub struct FoldedView {
    pub view: ActionView,
    /// `None`: no event of the stream is folded (or the stream is archived and gone).
    pub position: Option<String>,
    /// The stream is archived: the view is final and no event will follow.
    pub archived: bool,
}

pub async fn folded_view(
    store: &Submissions,
    database: &Database,
    action: ActionId,
) -> Result<Option<FoldedView>, ApiError> {
    let stored = database
        .collection::<StoredActionView>(ACTION_VIEWS)
        .find_one(doc! { "_id": action.to_string() })
        .await?;
    let Some(meta) = store.meta(action).await? else {
        return Ok(stored.map(|stored| FoldedView {
            view: stored.view,
            position: None,
            archived: true,
        }));
    };
    let projected_seq = stored.as_ref().map_or(0, |stored| stored.view.last_seq);
    if projected_seq >= meta.head_seq {
        return Ok(stored.map(|stored| FoldedView {
            view: stored.view,
            position: Some(stored.checkpoint),
            archived: meta.archived,
        }));
    }
    let (base, checkpoint) = match stored {
        Some(stored) => (Some(stored.view), Some(stored.checkpoint)),
        None => (None, None),
    };
    let (view, position) = fold_tail(store, action, base, checkpoint, meta.head_seq).await?;
    let Some(mut view) = view else {
        return Ok(None);
    };
    // Only a lagging view can be quarantined: the projector stopped before an event.
    view.projection_error = store.quarantined(action).await?;
    Ok(Some(FoldedView {
        view,
        position,
        archived: meta.archived,
    }))
}

/// How far the projected views (and with them the log and result buckets) have come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projected {
    /// Every event of the action is in the views.
    Whole,
    /// The projector has not written every event yet.
    Behind { finished: bool },
    /// The projector stopped at an event the store refused, until an operator steps in.
    Quarantined,
}

/// Whether result files and retries, which read the views and not the stream, see every
/// record of `action`. An action whose events are archived is whole.
pub async fn projected(state: &AppState, action: ActionId) -> Result<Projected, ApiError> {
    let Some(meta) = state.store.meta(action).await? else {
        return Ok(Projected::Whole);
    };
    if meta.archived {
        return Ok(Projected::Whole);
    }
    let options = mongodb::options::FindOneOptions::builder()
        .projection(doc! { "lastSeq": 1, "status": 1 })
        .build();
    let stored = state
        .database
        .collection::<mongodb::bson::Document>(ACTION_VIEWS)
        .find_one(doc! { "_id": action.to_string() })
        .with_options(options)
        .await?;
    let projected_seq = stored
        .as_ref()
        .and_then(infra::views::last_seq_of)
        .unwrap_or(0);
    // `Completed` is the last event that settles records: once the view is final, what
    // follows (a `RetryCreated`) adds no row.
    let final_view = stored
        .as_ref()
        .and_then(|view| view.get_str("status").ok())
        .and_then(domain::ActionStatus::parse)
        .is_some_and(|status| status.is_terminal());
    if final_view || projected_seq >= meta.head_seq {
        return Ok(Projected::Whole);
    }
    if state.store.quarantined(action).await?.is_some() {
        return Ok(Projected::Quarantined);
    }
    Ok(Projected::Behind {
        finished: meta.settled,
    })
}

/// The most a request folds of a lagging view's events (by their data's bytes): past it,
/// the view is served as far as it got (a consistent prefix, `lastSeq` says where). The
/// projector is then far behind or stopped, and every read folding the whole tail again
/// would load Redis for every tenant.
const TAIL_MAX_BYTES: usize = 32 << 20;

/// Folds the events after `checkpoint` onto `view`, page by page, up to `head_seq` (or
/// further, if more arrived meanwhile), at most `TAIL_MAX_BYTES` of them. Events that do
/// not fold leave the view at the last one that did: readers still see a consistent
/// prefix. Returns the position of the last event folded.
pub async fn fold_tail(
    store: &Submissions,
    action: ActionId,
    mut view: Option<ActionView>,
    mut checkpoint: Option<String>,
    head_seq: u64,
) -> Result<(Option<ActionView>, Option<String>), ApiError> {
    let mut bytes = 0;
    loop {
        let page = store
            .read_raw(action, checkpoint.as_deref(), TAIL_PAGE_EVENTS)
            .await?;
        for raw in &page {
            bytes += raw.data.len();
            let event = raw.decode(action)?;
            match apply_event(view.clone(), &event.envelope) {
                Ok(next) => {
                    view = next;
                    checkpoint = Some(event.position.clone());
                }
                Err(error) => {
                    tracing::error!(%action, %error, "events do not fold onto the stored view; serving the last view they fold to");
                    return Ok((view, checkpoint));
                }
            }
        }
        let folded_seq = view.as_ref().map_or(0, |view| view.last_seq);
        // A page may be cut short by its bytes: only an empty one is the end.
        if page.is_empty() || folded_seq >= head_seq {
            return Ok((view, checkpoint));
        }
        if bytes > TAIL_MAX_BYTES {
            tracing::warn!(%action, folded_seq, head_seq, "the view lags too far to fold on a read; serving it as far as it got");
            return Ok((view, checkpoint));
        }
    }
}

/// The view as it stands right after acceptance: the fold of the events just committed,
/// with the staged outcome events counted from the plan's totals rather than read back.
pub fn opening_view(
    new_action: &NewAction<'_>,
    summary: &PlanSummary,
) -> Result<ActionView, ApiError> {
    let envelope = |payload: &EventPayload, seq: u64| EventEnvelope {
        event_id: Ulid::new(),
        action_id: new_action.action_id,
        seq,
        schema_version: SCHEMA_VERSION,
        occurred_at: new_action.created_at,
        payload: payload.clone(),
    };
    let folding_error = |_| ApiError::internal("opening events do not fold");
    let mut events = new_action.events.iter();
    let created = events.next().map(|created| envelope(created, 1));
    let mut view = fold(None, created.as_ref())
        .map_err(folding_error)?
        .ok_or_else(|| ApiError::internal("no Created event"))?;
    for (code, records) in &summary.opening_outcomes {
        view.tally(*code, *records);
    }
    view.last_seq = 1 + u64::from(summary.outcome_events);
    for payload in events {
        let next = envelope(payload, view.last_seq + 1);
        view = apply_event(Some(view), &next)
            .map_err(folding_error)?
            .ok_or_else(|| ApiError::internal("the view vanished"))?;
    }
    Ok(view)
}
