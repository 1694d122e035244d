//! The fold from events to the action view that clients query.
//!
//! `apply_event` is pure and idempotent on redelivery: an event whose `seq` the view has
//! already folded changes nothing, and a gap is an error rather than a silent skip, so a
//! projector that missed an event re-reads instead of publishing wrong counts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::action::{ActionStatus, ActionType};
use crate::entity::EntityType;
use crate::event::{EventEnvelope, EventPayload};
use crate::ids::{AccountId, ActionId};
#[cfg(test)]
use crate::key::MatchBy;

fn natural() -> String {
    "natural".to_owned()
}
use crate::outcome::{OutcomeCode, OutcomeStatus, RecordOutcome};
use crate::pacing::Pacing;
use crate::projection::ProjectionError;
use crate::time::Timestamp;

/// The most retries one action may have: the api refuses more (`too_many_retries`), and a
/// view lists no more, should racing requests pass the api's check together.
pub const RETRIES_MAX: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionView {
    pub action_id: ActionId,
    pub account_id: AccountId,
    pub entity_type: EntityType,
    pub action_type: ActionType,
    /// The key records were matched by: `natural` (the entity's natural key), `id` or
    /// `externalId:<field>`.
    #[serde(default = "natural")]
    #[cfg_attr(feature = "openapi", schema(example = "natural"))]
    pub match_by: String,
    pub status: ActionStatus,
    pub total_records: u32,
    pub processed_records: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    /// Records never attempted because the action was cancelled.
    #[serde(default)]
    pub unprocessed: u32,
    /// processedRecords / totalRecords, 0.0 to 1.0.
    pub progress: f64,
    pub created_at: Timestamp,
    pub scheduled_for: Option<Timestamp>,
    /// When the action became eligible to run: at creation, or when its schedule released it.
    #[serde(default)]
    pub queued_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    /// Set while the action is paused.
    #[serde(default)]
    pub paused_at: Option<Timestamp>,
    #[serde(default)]
    pub cancel_requested_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// Drip mode: at most `batchSize` records every `intervalSeconds`.
    #[serde(default)]
    pub pacing: Option<Pacing>,
    #[serde(default)]
    pub max_records_per_minute: Option<u32>,
    /// The API key that submitted the action.
    #[serde(default)]
    pub api_key_id: Option<String>,
    /// Count of failed and skipped records per reason code.
    pub by_reason: BTreeMap<String, u32>,
    pub batch_count: u32,
    pub batches_processed: u32,
    /// Batches that failed every attempt and went to the dead-letter stream.
    pub batches_dead_lettered: u32,
    /// Batches settled as `unprocessed` by a cancel.
    #[serde(default)]
    pub batches_cancelled: u32,
    /// Records settled by batches (not at submission); the numerator of the throughput.
    pub processed_by_batches: u32,
    /// The action whose records this one retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<ActionId>,
    /// The retries of this action's records, oldest first, at most `RETRIES_MAX`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<ActionId>,
    /// Sequence number of the last event folded into this view.
    pub last_seq: u64,
    /// Set while the projector cannot write this action's views (it is quarantined): the
    /// stored view and logs stop before `seq`. `GET /bulk-actions/{id}` still folds every
    /// event into the counts and status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection_error: Option<ProjectionError>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("the first event of an action must be Created with seq 1, got {type_name} seq {seq}")]
    MissingCreated { type_name: &'static str, seq: u64 },
    #[error("expected event seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("event {type_name} (seq {seq}) does not belong to action {action_id}")]
    WrongAction {
        type_name: &'static str,
        seq: u64,
        action_id: ActionId,
    },
    #[error("a second Created event at seq {seq}")]
    DuplicateCreated { seq: u64 },
}

/// The statistics view, derived from the action view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionStats {
    pub action_id: ActionId,
    pub status: ActionStatus,
    pub total: u32,
    pub processed: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    pub unprocessed: u32,
    pub by_reason: BTreeMap<String, u32>,
    /// From start to completion, or to `now` while running; null before start.
    pub duration_ms: Option<i64>,
    /// Records settled by batches per second of `durationMs`; null before start.
    pub records_per_second: Option<f64>,
}

/// Folds one event into the view. `None` is the state before the action exists.
pub fn apply_event(
    state: Option<ActionView>,
    event: &EventEnvelope,
) -> Result<Option<ActionView>, FoldError> {
    let type_name = event.payload.type_name();
    let Some(mut view) = state else {
        return match &event.payload {
            EventPayload::Created { .. } if event.seq == 1 => Ok(Some(created(event))),
            _ => Err(FoldError::MissingCreated {
                type_name,
                seq: event.seq,
            }),
        };
    };
    if event.action_id != view.action_id {
        return Err(FoldError::WrongAction {
            type_name,
            seq: event.seq,
            action_id: view.action_id,
        });
    }
    if event.seq <= view.last_seq {
        return Ok(Some(view));
    }
    if event.seq != view.last_seq + 1 {
        return Err(FoldError::Gap {
            expected: view.last_seq + 1,
            got: event.seq,
        });
    }
    match &event.payload {
        EventPayload::Created { .. } => return Err(FoldError::DuplicateCreated { seq: event.seq }),
        EventPayload::RecordRejected { records, .. }
        | EventPayload::RecordSkipped { records, .. } => {
            view.count(records);
        }
        EventPayload::Released {} => {
            view.queued_at = Some(event.occurred_at);
            if view.status == ActionStatus::Scheduled {
                view.status = ActionStatus::Queued;
            }
        }
        EventPayload::Started {} => view.start(event.occurred_at),
        EventPayload::Paused { .. } => {
            if view.status.is_active() {
                view.status = ActionStatus::Paused;
                view.paused_at = Some(event.occurred_at);
            }
        }
        EventPayload::Resumed { .. } => {
            if view.status == ActionStatus::Paused {
                view.paused_at = None;
                view.status = view.unpaused_status();
            }
        }
        EventPayload::CancelRequested { .. } => {
            if !view.status.is_terminal() {
                view.status = ActionStatus::Cancelling;
                view.paused_at = None;
                view.cancel_requested_at = Some(event.occurred_at);
            }
        }
        EventPayload::BatchCancelled { outcomes, .. } => {
            view.count(outcomes);
            view.batches_cancelled += 1;
        }
        EventPayload::Rescheduled { scheduled_for, .. } => {
            view.scheduled_for = Some(*scheduled_for)
        }
        EventPayload::PacingChanged {
            pacing,
            max_records_per_minute,
            ..
        } => {
            view.pacing = *pacing;
            view.max_records_per_minute = *max_records_per_minute;
        }
        EventPayload::BatchProcessed { outcomes, .. } => {
            view.start(event.occurred_at);
            view.count(outcomes);
            view.batches_processed += 1;
            view.processed_by_batches += u32::try_from(outcomes.len()).unwrap_or(u32::MAX);
        }
        EventPayload::BatchDeadLettered { outcomes, .. } => {
            view.start(event.occurred_at);
            view.count(outcomes);
            view.batches_dead_lettered += 1;
            view.processed_by_batches += u32::try_from(outcomes.len()).unwrap_or(u32::MAX);
        }
        EventPayload::RetryCreated { retry, .. } => {
            if view.retries.len() < RETRIES_MAX && !view.retries.contains(retry) {
                view.retries.push(*retry);
            }
        }
        EventPayload::Completed {} => {
            view.status = view.final_status();
            view.paused_at = None;
            view.completed_at = Some(event.occurred_at);
        }
    }
    view.last_seq = event.seq;
    Ok(Some(view))
}

/// Folds a whole sequence; convenience for replay and tests.
pub fn fold<'a>(
    state: Option<ActionView>,
    events: impl IntoIterator<Item = &'a EventEnvelope>,
) -> Result<Option<ActionView>, FoldError> {
    events.into_iter().try_fold(state, apply_event)
}

fn created(event: &EventEnvelope) -> ActionView {
    let EventPayload::Created {
        account_id,
        entity_type,
        action_type,
        total_records,
        batch_count,
        scheduled_for,
        pacing,
        max_records_per_minute,
        api_key_id,
        match_by,
        retry_of,
        ..
    } = &event.payload
    else {
        unreachable!("created() is only called with a Created payload");
    };
    let future_start = scheduled_for.filter(|at| *at > event.occurred_at);
    ActionView {
        action_id: event.action_id,
        account_id: account_id.clone(),
        entity_type: *entity_type,
        action_type: *action_type,
        match_by: match_by.as_text().into_owned(),
        status: if future_start.is_some() {
            ActionStatus::Scheduled
        } else {
            ActionStatus::Queued
        },
        total_records: *total_records,
        processed_records: 0,
        succeeded: 0,
        failed: 0,
        skipped: 0,
        unprocessed: 0,
        progress: 0.0,
        created_at: event.occurred_at,
        scheduled_for: *scheduled_for,
        queued_at: future_start.is_none().then_some(event.occurred_at),
        started_at: None,
        paused_at: None,
        cancel_requested_at: None,
        completed_at: None,
        pacing: *pacing,
        max_records_per_minute: *max_records_per_minute,
        api_key_id: api_key_id.clone(),
        by_reason: BTreeMap::new(),
        batch_count: *batch_count,
        batches_processed: 0,
        batches_dead_lettered: 0,
        batches_cancelled: 0,
        processed_by_batches: 0,
        retry_of: *retry_of,
        retries: Vec::new(),
        last_seq: event.seq,
        projection_error: None,
    }
}

impl ActionView {
    fn start(&mut self, at: Timestamp) {
        if self.started_at.is_none() {
            self.started_at = Some(at);
        }
        if self.queued_at.is_none() {
            // A batch can only run once the action is queued; older streams lack `Released`
            // for actions paused while scheduled, so the first sign of work stands in.
            self.queued_at = Some(at);
        }
        if matches!(self.status, ActionStatus::Scheduled | ActionStatus::Queued) {
            self.status = ActionStatus::Running;
        }
    }

    /// Where a paused action stands once resumed.
    fn unpaused_status(&self) -> ActionStatus {
        if self.started_at.is_some() {
            ActionStatus::Running
        } else if self.queued_at.is_some() {
            ActionStatus::Queued
        } else {
            ActionStatus::Scheduled
        }
    }

    /// `cancelled` when a cancel was requested; otherwise `failed` when the store could
    /// apply nothing at all: some batch was dead-lettered and no record succeeded. Anything
    /// less is `completed`, with the failures in its counts.
    fn final_status(&self) -> ActionStatus {
        if self.cancel_requested_at.is_some() {
            ActionStatus::Cancelled
        } else if self.batches_dead_lettered > 0 && self.succeeded == 0 {
            ActionStatus::Failed
        } else {
            ActionStatus::Completed
        }
    }

    fn count(&mut self, outcomes: &[RecordOutcome]) {
        for outcome in outcomes {
            self.tally(outcome.code, 1);
        }
    }

    /// Counts `records` more records settled with `code`. What folding their outcome
    /// events does, for a caller that kept only the counts (a streamed submission).
    pub fn tally(&mut self, code: OutcomeCode, records: u32) {
        match code.status() {
            OutcomeStatus::Succeeded => self.succeeded += records,
            OutcomeStatus::Failed => self.failed += records,
            OutcomeStatus::Skipped => self.skipped += records,
            OutcomeStatus::Unprocessed => self.unprocessed += records,
        }
        if code.status() != OutcomeStatus::Succeeded {
            *self.by_reason.entry(code.as_str().to_owned()).or_default() += records;
        }
        self.processed_records = self.succeeded + self.failed + self.skipped;
        self.progress = if self.total_records == 0 {
            1.0
        } else {
            f64::from(self.processed_records) / f64::from(self.total_records)
        };
    }

    pub fn stats(&self, now: Timestamp) -> ActionStats {
        let duration_ms = self
            .started_at
            .map(|start| self.completed_at.unwrap_or(now).millis_since(start).max(0));
        let records_per_second = duration_ms.map(|ms| {
            if ms == 0 {
                0.0
            } else {
                f64::from(self.processed_by_batches) * 1000.0 / ms as f64
            }
        });
        ActionStats {
            action_id: self.action_id,
            status: self.status,
            total: self.total_records,
            processed: self.processed_records,
            succeeded: self.succeeded,
            failed: self.failed,
            skipped: self.skipped,
            unprocessed: self.unprocessed,
            by_reason: self.by_reason.clone(),
            duration_ms,
            records_per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::OutcomeCode;
    use proptest::prelude::*;
    use ulid::Ulid;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + ms).unwrap()
    }

    fn outcome(index: u32, code: OutcomeCode) -> RecordOutcome {
        RecordOutcome {
            index,
            email: Some(format!("r{index}@x.io")),
            code,
            message: None,
        }
    }

    fn history() -> Vec<EventEnvelope> {
        let payloads = vec![
            EventPayload::Created {
                retry_of: None,
                account_id: AccountId::parse("acme").unwrap(),
                entity_type: EntityType::Contact,
                action_type: ActionType::Update,
                total_records: 6,
                batch_count: 2,
                scheduled_for: None,
                pacing: None,
                max_records_per_minute: None,
                api_key_id: None,
                custom_fields: None,
                match_by: MatchBy::Natural,
            },
            EventPayload::RecordSkipped {
                submitted: Vec::new(),
                records: vec![outcome(5, OutcomeCode::DuplicateEmail)],
            },
            EventPayload::RecordRejected {
                submitted: Vec::new(),
                records: vec![outcome(4, OutcomeCode::InvalidEmail)],
            },
            EventPayload::Started {},
            EventPayload::BatchProcessed {
                submitted: Vec::new(),
                batch: 1,
                outcomes: vec![
                    outcome(2, OutcomeCode::Updated),
                    outcome(3, OutcomeCode::NotFound),
                ],
                consumer: "c".into(),
                attempt: 1,
            },
            EventPayload::BatchProcessed {
                submitted: Vec::new(),
                batch: 0,
                outcomes: vec![
                    outcome(0, OutcomeCode::Updated),
                    outcome(1, OutcomeCode::Updated),
                ],
                consumer: "c".into(),
                attempt: 1,
            },
            EventPayload::Completed {},
        ];
        envelopes(payloads)
    }

    #[test]
    fn a_retry_is_listed_once_and_changes_nothing_else() {
        let mut events = history();
        let finished = fold(None, &events).unwrap().unwrap();
        let retry = ActionId::from_ulid(ulid::Ulid::new());
        let mut payloads: Vec<EventPayload> = events.drain(..).map(|e| e.payload).collect();
        payloads.push(EventPayload::RetryCreated {
            retry,
            api_key_id: None,
        });
        payloads.push(EventPayload::RetryCreated {
            retry,
            api_key_id: None,
        });
        let view = fold(None, &envelopes(payloads)).unwrap().unwrap();
        assert_eq!(view.retries, vec![retry]);
        assert_eq!(view.status, finished.status);
        assert_eq!(view.succeeded, finished.succeeded);
        assert_eq!(view.completed_at, finished.completed_at);
    }

    #[test]
    fn folds_a_whole_action() {
        let view = fold(None, &history()).unwrap().unwrap();
        assert_eq!(view.status, ActionStatus::Completed);
        assert_eq!((view.succeeded, view.failed, view.skipped), (3, 2, 1));
        assert_eq!(view.processed_records, 6);
        assert_eq!(view.progress, 1.0);
        assert_eq!(view.by_reason.get("not_found"), Some(&1));
        assert_eq!(view.by_reason.get("duplicate_email"), Some(&1));
        assert_eq!(view.started_at, Some(at(4000)));
        assert_eq!(view.completed_at, Some(at(7000)));
        let stats = view.stats(at(99_000));
        assert_eq!(stats.duration_ms, Some(3000));
        assert_eq!(stats.records_per_second, Some(4.0 / 3.0));
    }

    #[test]
    fn gaps_and_orphans_are_errors() {
        let events = history();
        let view = fold(None, &events[..2]).unwrap();
        assert_eq!(
            apply_event(view, &events[3]),
            Err(FoldError::Gap {
                expected: 3,
                got: 4
            })
        );
        assert!(matches!(
            apply_event(None, &events[1]),
            Err(FoldError::MissingCreated { .. })
        ));
    }

    #[test]
    fn scheduled_actions_wait_until_released() {
        let mut events = history();
        if let EventPayload::Created { scheduled_for, .. } = &mut events[0].payload {
            *scheduled_for = Some(at(60_000));
        }
        let view = fold(None, &events[..1]).unwrap().unwrap();
        assert_eq!(view.status, ActionStatus::Scheduled);
    }

    proptest! {
        /// At-least-once delivery: events arrive in order, but any already delivered event
        /// may come again at any later point. The view must not notice.
        #[test]
        fn redelivered_duplicates_change_nothing(
            redeliveries in proptest::collection::vec((0usize..7, 0usize..7), 0..30)
        ) {
            let events = history();
            let expected = fold(None, &events).unwrap();
            let mut delivery: Vec<&EventEnvelope> = Vec::new();
            for (position, event) in events.iter().enumerate() {
                delivery.push(event);
                for (after, which) in &redeliveries {
                    if *after == position && *which <= position {
                        delivery.push(&events[*which]);
                    }
                }
            }
            prop_assert_eq!(fold(None, delivery).unwrap(), expected);
        }

        /// Folding in two sittings from a stored view equals folding in one.
        #[test]
        fn resuming_from_a_checkpoint_is_the_same_as_one_fold(split in 1usize..7) {
            let events = history();
            let partial = fold(None, &events[..split]).unwrap();
            let resumed = fold(partial, &events[split.saturating_sub(1)..]).unwrap();
            prop_assert_eq!(resumed, fold(None, &events).unwrap());
        }
    }

    fn dead_lettered(batch: u32, indexes: &[u32]) -> EventPayload {
        EventPayload::BatchDeadLettered {
            submitted: Vec::new(),
            batch,
            attempts: 8,
            error: "boom".into(),
            outcomes: indexes
                .iter()
                .map(|&i| outcome(i, OutcomeCode::DeadLettered))
                .collect(),
        }
    }

    #[test]
    fn a_dead_lettered_batch_completes_with_failures() {
        let mut events = history();
        events[5].payload = dead_lettered(0, &[0, 1]);
        let view = fold(None, &events).unwrap().unwrap();
        assert_eq!(view.status, ActionStatus::Completed);
        assert_eq!((view.succeeded, view.failed, view.skipped), (1, 4, 1));
        assert_eq!(view.by_reason.get("dead_lettered"), Some(&2));
        assert_eq!(view.batches_dead_lettered, 1);
        assert_eq!(view.batches_processed, 1);
    }

    #[test]
    fn an_action_nothing_could_be_applied_to_has_failed() {
        let mut events = history();
        events[4].payload = dead_lettered(1, &[2, 3]);
        events[5].payload = dead_lettered(0, &[0, 1]);
        let view = fold(None, &events).unwrap().unwrap();
        assert_eq!(view.status, ActionStatus::Failed);
        assert_eq!(view.processed_records, 6);
    }

    /// The payloads as one action's events, seq 1, 2, … a second apart.
    fn envelopes(payloads: Vec<EventPayload>) -> Vec<EventEnvelope> {
        let action_id = ActionId::from_ulid(Ulid::from_parts(1, 1));
        payloads
            .into_iter()
            .zip(1u64..)
            .map(|(payload, seq)| EventEnvelope {
                event_id: Ulid::from_parts(seq, 0),
                action_id,
                seq,
                schema_version: crate::SCHEMA_VERSION,
                occurred_at: at(seq as i64 * 1000),
                payload,
            })
            .collect()
    }

    fn created(scheduled_for: Option<Timestamp>) -> EventPayload {
        EventPayload::Created {
            retry_of: None,
            account_id: AccountId::parse("acme").unwrap(),
            entity_type: EntityType::Contact,
            action_type: ActionType::Create,
            total_records: 4,
            batch_count: 2,
            scheduled_for,
            pacing: None,
            max_records_per_minute: None,
            api_key_id: None,
            custom_fields: None,
            match_by: MatchBy::Natural,
        }
    }

    fn statuses(payloads: Vec<EventPayload>) -> Vec<ActionStatus> {
        let events = envelopes(payloads);
        (1..=events.len())
            .map(|n| fold(None, &events[..n]).unwrap().unwrap().status)
            .collect()
    }

    #[test]
    fn pause_and_resume_return_to_where_the_action_was() {
        use ActionStatus::*;
        let scheduled = Some(at(60_000));
        assert_eq!(
            statuses(vec![
                created(scheduled),
                EventPayload::Paused { api_key_id: None },
                EventPayload::Resumed { api_key_id: None },
                EventPayload::Paused { api_key_id: None },
                EventPayload::Released {},
                EventPayload::Resumed { api_key_id: None },
                EventPayload::Started {},
                EventPayload::Paused { api_key_id: None },
                EventPayload::Paused { api_key_id: None },
                EventPayload::Resumed { api_key_id: None },
            ]),
            vec![
                Scheduled, Paused, Scheduled, Paused, Paused, Queued, Running, Paused, Paused,
                Running
            ]
        );
    }

    #[test]
    fn a_cancel_ends_cancelled_with_unprocessed_records() {
        let events = envelopes(vec![
            created(None),
            EventPayload::Started {},
            EventPayload::BatchProcessed {
                submitted: Vec::new(),
                batch: 0,
                outcomes: vec![
                    outcome(0, OutcomeCode::Created),
                    outcome(1, OutcomeCode::Created),
                ],
                consumer: "c".into(),
                attempt: 1,
            },
            EventPayload::Paused { api_key_id: None },
            EventPayload::CancelRequested { api_key_id: None },
            EventPayload::BatchCancelled {
                submitted: Vec::new(),
                batch: 1,
                outcomes: vec![
                    outcome(2, OutcomeCode::Unprocessed),
                    outcome(3, OutcomeCode::Unprocessed),
                ],
            },
            EventPayload::Completed {},
        ]);
        let cancelling = fold(None, &events[..5]).unwrap().unwrap();
        assert_eq!(cancelling.status, ActionStatus::Cancelling);
        assert_eq!(cancelling.paused_at, None);
        let view = fold(None, &events).unwrap().unwrap();
        assert_eq!(view.status, ActionStatus::Cancelled);
        assert_eq!((view.succeeded, view.unprocessed), (2, 2));
        assert_eq!(view.processed_records, 2);
        assert_eq!(view.batches_cancelled, 1);
        assert_eq!(view.by_reason.get("unprocessed"), Some(&2));
        assert_eq!(view.stats(at(99_000)).unprocessed, 2);
    }
}
