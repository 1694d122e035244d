//! Making a planned submission an action: its start, its id (reserved under its
//! `Idempotency-Key`, if any), its opening events, and the commit.

use domain::fields::FieldDefinitions;
use domain::MatchBy;
use domain::{ActionId, ActionView, EventPayload, PlanSummary, ScheduleError, Timestamp};
use infra::event_store::{Commit, NewAction};
use infra::staging::Staging;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::idempotency::{self, Claim, IdempotencyKey};
use crate::routes::actions::schedule_refused;
use crate::submission::ActionSettings;
use crate::{read_model, AppState};

pub(crate) enum Committed {
    Created(Box<ActionView>),
    /// An `Idempotency-Key` names an action that exists: the answer is that action.
    Replayed(ActionId),
}

/// What planning the records produced, and the start time checked when the request came.
pub(crate) struct Plan {
    pub(crate) summary: PlanSummary,
    pub(crate) batch_size: usize,
    pub(crate) early_schedule: Result<Option<Timestamp>, ScheduleError>,
    /// The account's own fields the records were checked against.
    pub(crate) custom_fields: FieldDefinitions,
    pub(crate) match_by: MatchBy,
}

pub(crate) async fn commit(
    state: &AppState,
    caller: &Caller,
    settings: &ActionSettings,
    plan: Plan,
    idempotency: Option<(&IdempotencyKey, &str)>,
    staging: &Staging,
) -> Result<Committed, ApiError> {
    let summary = plan.summary;
    if summary.total_records == 0 {
        return Err(ApiError::bad_request(
            ErrorCode::EmptyData,
            "the submission must contain at least one record",
        ));
    }
    let created_at = infra::clock::now();
    let start_at = match start_at_commit(state, settings, plan.early_schedule, created_at) {
        Ok(start_at) => start_at,
        Err(refused) => {
            // A resubmission of an action that exists gets it, even once its time has passed.
            let Some((key, fingerprint)) = idempotency else {
                return Err(refused);
            };
            let existing =
                idempotency::committed(state, &settings.account_id, key, fingerprint).await?;
            return existing.map(Committed::Replayed).ok_or(refused);
        }
    };
    let action_id = match action_id(state, settings, idempotency).await? {
        Claim::Proceed(id) => id,
        Claim::Replay(id) => return Ok(Committed::Replayed(id)),
    };
    let batch_size = u32::try_from(plan.batch_size).unwrap_or(u32::MAX);
    let new_action = NewAction {
        action_id,
        account_id: &settings.account_id,
        action_type: settings.action_type,
        entity_type: settings.entity_type,
        batch_count: summary.batch_count,
        batch_size,
        records_in_batches: summary.records_in_batches,
        pace: domain::pacing::action_bucket(
            settings.pacing,
            settings.max_records_per_minute,
            batch_size,
        ),
        start_at,
        created_at,
        events: opening_events(
            caller,
            settings,
            &summary,
            &plan.custom_fields,
            &plan.match_by,
        ),
        staging,
    };
    if state.store.commit_action(&new_action).await? == Commit::AlreadyExisted {
        return Ok(Committed::Replayed(action_id));
    }
    tracing::info!(%action_id, account = %settings.account_id, records = summary.total_records, batches = summary.batch_count, "bulk action accepted");
    note_kept(state, settings, action_id, summary.kept_bytes).await;
    Ok(Committed::Created(Box::new(read_model::opening_view(
        &new_action,
        &summary,
    )?)))
}

/// Counts the records refused or skipped at submission that the action keeps, against its
/// account and on its meta (for retention to release). After the commit, apart from it: a
/// failure leaves the count low, which the bound tolerates, so it is logged.
async fn note_kept(state: &AppState, settings: &ActionSettings, action: ActionId, bytes: u64) {
    let noted = async {
        state.store.note_kept_at_submission(action, bytes).await?;
        state.store.charge_kept(&settings.account_id, bytes).await
    };
    if let Err(error) = noted.await {
        tracing::warn!(%action, %error, bytes, "could not count the kept records against the account");
    }
}

/// What `account`'s actions may still keep for result files: the planner of a new action
/// keeps refused and skipped records within it.
pub(crate) async fn kept_room(
    state: &AppState,
    account: &domain::AccountId,
) -> Result<u64, ApiError> {
    let kept = state.store.account_kept(account).await?;
    Ok(state.config.kept_per_account.saturating_sub(kept))
}

/// The start, checked again now that the records are in: a start that was fine when the
/// request came and has passed while the upload arrived is "now".
fn start_at_commit(
    state: &AppState,
    settings: &ActionSettings,
    early_schedule: Result<Option<Timestamp>, ScheduleError>,
    now: Timestamp,
) -> Result<Option<Timestamp>, ApiError> {
    early_schedule.map_err(schedule_refused)?;
    match domain::schedule::start_time(
        settings.scheduled_for,
        now,
        state.config.schedule_horizon_days,
    ) {
        Ok(start_at) => Ok(start_at),
        Err(ScheduleError::InPast { .. }) => Ok(None),
        Err(error) => Err(schedule_refused(error)),
    }
}

/// A fresh id, or with an `Idempotency-Key` the one reserved under it (or the action that
/// already answers it).
async fn action_id(
    state: &AppState,
    settings: &ActionSettings,
    idempotency: Option<(&IdempotencyKey, &str)>,
) -> Result<Claim, ApiError> {
    let candidate = state.next_action_id(&settings.account_id);
    match idempotency {
        Some((key, fingerprint)) => {
            idempotency::claim(state, &settings.account_id, key, fingerprint, candidate).await
        }
        None => Ok(Claim::Proceed(candidate)),
    }
}

/// `Created`, and `Completed` at once if no record is left to apply.
fn opening_events(
    caller: &Caller,
    settings: &ActionSettings,
    summary: &PlanSummary,
    custom_fields: &FieldDefinitions,
    match_by: &MatchBy,
) -> Vec<EventPayload> {
    let created = EventPayload::Created {
        account_id: settings.account_id.clone(),
        entity_type: settings.entity_type,
        action_type: settings.action_type,
        total_records: summary.total_records,
        batch_count: summary.batch_count,
        scheduled_for: settings.scheduled_for,
        pacing: settings.pacing,
        max_records_per_minute: settings.max_records_per_minute,
        api_key_id: Some(caller.key_id.clone()),
        custom_fields: (!custom_fields.fields.is_empty()).then(|| custom_fields.clone()),
        match_by: match_by.clone(),
        retry_of: settings.retry_of,
    };
    let mut events = vec![created];
    if summary.batch_count == 0 {
        events.push(EventPayload::Completed {});
    }
    events
}
