//! Reading the action view with "read your own writes".
//!
//! Views are projected asynchronously, so right after a `202` the projector may not have
//! written the view yet. The api compares the view's `lastSeq` with the action's head seq
//! in Redis and, when the view lags, folds the missing events itself (the same pure fold the
//! projector runs) — at most `TAIL_FOLD_LIMIT` of them, so a badly lagging projector costs
//! readers a bounded amount of work and they still see a consistent prefix.

use domain::view::fold;
use domain::{ActionId, ActionView};
use infra::mongo::ACTION_VIEWS;
use infra::views::StoredActionView;
use mongodb::bson::doc;

use crate::error::ApiError;
use crate::AppState;

const TAIL_FOLD_LIMIT: usize = 64;

pub async fn action_view(
    state: &AppState,
    action: ActionId,
) -> Result<Option<ActionView>, ApiError> {
    let stored = state
        .database
        .collection::<StoredActionView>(ACTION_VIEWS)
        .find_one(doc! { "_id": action.to_string() })
        .await?;
    let Some(meta) = state.store.meta(action).await? else {
        return Ok(stored.map(|stored| stored.view));
    };
    let projected_seq = stored.as_ref().map_or(0, |stored| stored.view.last_seq);
    if projected_seq >= meta.head_seq {
        return Ok(stored.map(|stored| stored.view));
    }
    let checkpoint = stored.as_ref().map(|stored| stored.checkpoint.clone());
    let tail = state
        .store
        .read(action, checkpoint.as_deref(), TAIL_FOLD_LIMIT)
        .await?;
    let base = stored.map(|stored| stored.view);
    match fold(base.clone(), tail.iter().map(|event| &event.envelope)) {
        Ok(view) => Ok(view),
        Err(error) => {
            tracing::error!(%action, %error, "events do not fold onto the stored view; serving the view");
            Ok(base)
        }
    }
}
