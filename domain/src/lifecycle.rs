//! The rules of an action's lifecycle commands, in one place: whether a cancel, pause,
//! resume or amendment may happen now, and which events record it (`decide`, in the style
//! of esrs' `handle_command`), and how those events change what the rules look at
//! (`Facts::apply`).
//!
//! Redis keeps the facts (the action's meta and schedule). A decision is appended only if
//! the facts are still the ones it was made on (the script compares `Facts::signature`
//! atomically); otherwise the caller reads them again and decides again. So no rule lives
//! in a script, and no decision is applied to facts it did not see. Equal facts are enough:
//! `decide` is a function of them, so whatever happened in between, it decides the same.

use serde::{Deserialize, Serialize};

use crate::pacing::Pacing;
use crate::{EventPayload, Timestamp};

/// What the rules look at, as the action's meta holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    pub batches: u32,
    /// Batches with an outcome; all of them: the action has finished.
    pub settled: u32,
    pub cancelled: bool,
    pub paused: bool,
    /// It waits in the schedule for its start time.
    pub scheduled: bool,
    pub pace: Pace,
    pub pace_source: PaceSource,
}

/// Where the pace in the facts was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaceSource {
    /// The action's meta, as `Pace` JSON: what the signature spells.
    #[default]
    Meta,
    /// Its events: an action of a build before the meta held the pace. The signature
    /// spells it as the meta does, empty, until a change of pace writes it there.
    Events,
}

impl Facts {
    pub fn finished(&self) -> bool {
        self.settled >= self.batches
    }

    /// The facts `decide` reads, one character each and then the pace as the meta holds it,
    /// as the scripts spell them (`lifecycle_signature` in infra's `lua/lib.lua`).
    pub fn signature(&self) -> String {
        let mark = |set: bool, letter: char| if set { letter } else { '-' };
        let flags: String = [
            mark(self.finished(), 'F'),
            mark(self.cancelled, 'C'),
            mark(self.paused, 'P'),
            mark(self.scheduled, 'S'),
        ]
        .iter()
        .collect();
        let pace = match self.pace_source {
            PaceSource::Meta => self.pace.to_json(),
            PaceSource::Events => String::new(),
        };
        format!("{flags}:{pace}")
    }

    /// The facts once `event` has happened.
    pub fn apply(mut self, event: &EventPayload) -> Self {
        match event {
            EventPayload::CancelRequested { .. } => {
                self.cancelled = true;
                self.paused = false;
                self.scheduled = false;
            }
            EventPayload::Released {} => self.scheduled = false,
            EventPayload::PacingChanged { .. } => {
                self.pace = Pace::recorded_by(event).unwrap_or(self.pace);
                self.pace_source = PaceSource::Meta;
            }
            EventPayload::Paused { .. } => self.paused = true,
            EventPayload::Resumed { .. } => self.paused = false,
            EventPayload::BatchProcessed { .. }
            | EventPayload::BatchCancelled { .. }
            | EventPayload::BatchDeadLettered { .. } => {
                self.settled = self.settled.saturating_add(1);
            }
            _ => {}
        }
        self
    }
}

/// What a batch of the action does when its turn comes: when the dispatcher reaches it,
/// when a consumer is handed it, and when a scheduled action is released (it joins its
/// account's queue only if its batches would be applied).
///
/// These moments are atomic with other actions' batches and budgets, so the rule is applied
/// inside the scripts, by `batch_turn` in infra's `lua/lib.lua`; this is its twin, and a test
/// (tests/tests/flow.rs) runs both on every combination of the facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchTurn {
    /// Charged to the budgets and applied to the store.
    Apply,
    /// Paused: kept back (parked if already handed out), its budget given back.
    Hold,
    /// Cancelled: settled as unprocessed without reaching the store, free of budget.
    SettleUnprocessed,
}

impl BatchTurn {
    /// The name the scripts use for it.
    pub fn name(self) -> &'static str {
        match self {
            BatchTurn::Apply => "apply",
            BatchTurn::Hold => "hold",
            BatchTurn::SettleUnprocessed => "settle",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Apply, Self::Hold, Self::SettleUnprocessed]
            .into_iter()
            .find(|turn| turn.name() == name)
    }
}

impl Facts {
    /// A cancel wins over a pause: a cancelled action's batches are settled, never held.
    pub fn batch_turn(&self) -> BatchTurn {
        if self.cancelled {
            BatchTurn::SettleUnprocessed
        } else if self.paused {
            BatchTurn::Hold
        } else {
            BatchTurn::Apply
        }
    }
}

/// A client's request to change an action.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Cancel,
    Pause,
    Resume,
    Amend(Amendment),
}

/// A PATCH: a new start, a change of pace, or both.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Amendment {
    pub start_at: Option<Timestamp>,
    pub pace: Option<PaceChange>,
}

/// An action's own pace, below its account's limit: what `Created` and `PacingChanged`
/// record. The meta keeps it as this JSON, so a change is merged with the pace it changes,
/// not with a view that may lag behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pace {
    pub pacing: Option<Pacing>,
    pub max_records_per_minute: Option<u32>,
}

impl Pace {
    /// How the meta holds it (the scripts compare it as text).
    pub fn to_json(self) -> String {
        serde_json::to_string(&self).unwrap_or_default()
    }

    /// The pace an event records, if it records one.
    pub fn recorded_by(event: &EventPayload) -> Option<Pace> {
        match event {
            EventPayload::Created {
                pacing,
                max_records_per_minute,
                ..
            }
            | EventPayload::PacingChanged {
                pacing,
                max_records_per_minute,
                ..
            } => Some(Pace {
                pacing: *pacing,
                max_records_per_minute: *max_records_per_minute,
            }),
            _ => None,
        }
    }
}

/// What a PATCH says of the pace: each part `None` stays as it was, `Some(None)` is
/// removed, `Some(Some(x))` is set.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PaceChange {
    pub pacing: Option<Option<Pacing>>,
    pub max_records_per_minute: Option<Option<u32>>,
}

impl PaceChange {
    pub fn applied_to(self, pace: Pace) -> Pace {
        Pace {
            pacing: self.pacing.unwrap_or(pace.pacing),
            max_records_per_minute: self
                .max_records_per_minute
                .unwrap_or(pace.max_records_per_minute),
        }
    }
}

/// Why a command cannot happen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the action has finished: every record has an outcome")]
    Finished,
    #[error("the action is being cancelled")]
    BeingCancelled,
    #[error("the action's start time has come; only a scheduled action can be moved")]
    AlreadyReleased,
}

/// The events that record `command` on an action with `facts`; none when it is so already
/// (a repeated request). `api_key_id` is the key that asked.
pub fn decide(
    facts: &Facts,
    command: &Command,
    api_key_id: Option<&str>,
) -> Result<Vec<EventPayload>, Refusal> {
    let api_key_id = api_key_id.map(str::to_owned);
    // A repeated cancel is answered with the action, whatever has happened since.
    if *command == Command::Cancel && facts.cancelled {
        return Ok(Vec::new());
    }
    if facts.finished() {
        return Err(Refusal::Finished);
    }
    if facts.cancelled {
        return Err(Refusal::BeingCancelled);
    }
    Ok(match command {
        Command::Cancel => vec![EventPayload::CancelRequested { api_key_id }],
        Command::Pause if facts.paused => Vec::new(),
        Command::Pause => vec![EventPayload::Paused { api_key_id }],
        Command::Resume if !facts.paused => Vec::new(),
        Command::Resume => vec![EventPayload::Resumed { api_key_id }],
        Command::Amend(amendment) => amend(facts, amendment, api_key_id)?,
    })
}

fn amend(
    facts: &Facts,
    amendment: &Amendment,
    api_key_id: Option<String>,
) -> Result<Vec<EventPayload>, Refusal> {
    let mut events = Vec::new();
    if let Some(scheduled_for) = amendment.start_at {
        if !facts.scheduled {
            return Err(Refusal::AlreadyReleased);
        }
        events.push(EventPayload::Rescheduled {
            scheduled_for,
            api_key_id: api_key_id.clone(),
        });
    }
    if let Some(change) = amendment.pace {
        let pace = change.applied_to(facts.pace);
        if pace != facts.pace {
            events.push(EventPayload::PacingChanged {
                pacing: pace.pacing,
                max_records_per_minute: pace.max_records_per_minute,
                api_key_id,
            });
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn running() -> Facts {
        Facts {
            batches: 4,
            settled: 1,
            ..Facts::default()
        }
    }

    fn types(events: &[EventPayload]) -> Vec<&'static str> {
        events.iter().map(EventPayload::type_name).collect()
    }

    #[test]
    fn a_batch_is_held_while_paused_and_settled_once_cancelled() {
        let paused = running().apply(&EventPayload::Paused { api_key_id: None });
        assert_eq!(running().batch_turn(), BatchTurn::Apply);
        assert_eq!(paused.batch_turn(), BatchTurn::Hold);
        let cancelled = paused.apply(&EventPayload::CancelRequested { api_key_id: None });
        assert_eq!(cancelled.batch_turn(), BatchTurn::SettleUnprocessed);
        let resumed = paused.apply(&EventPayload::Resumed { api_key_id: None });
        assert_eq!(resumed.batch_turn(), BatchTurn::Apply);
        for turn in [
            BatchTurn::Apply,
            BatchTurn::Hold,
            BatchTurn::SettleUnprocessed,
        ] {
            assert_eq!(BatchTurn::parse(turn.name()), Some(turn));
        }
        assert_eq!(BatchTurn::parse("parked"), None);
    }

    #[test]
    fn each_command_on_a_running_action() {
        let facts = running();
        let decided = |command| decide(&facts, &command, Some("k")).map(|e| types(&e));
        assert_eq!(decided(Command::Cancel), Ok(vec!["CancelRequested"]));
        assert_eq!(decided(Command::Pause), Ok(vec!["Paused"]));
        assert_eq!(decided(Command::Resume), Ok(vec![]));
        let later = Timestamp::from_millis(1_900_000_000_000).unwrap();
        let moved = Command::Amend(Amendment {
            start_at: Some(later),
            pace: None,
        });
        assert_eq!(decided(moved), Err(Refusal::AlreadyReleased));
        let paced = Command::Amend(Amendment {
            start_at: None,
            pace: Some(PaceChange {
                pacing: None,
                max_records_per_minute: Some(Some(60)),
            }),
        });
        assert_eq!(decided(paced), Ok(vec!["PacingChanged"]));
    }

    #[test]
    fn a_change_of_pace_keeps_what_it_leaves_out_and_a_repeat_records_nothing() {
        let pacing = Pacing {
            batch_size: 10,
            interval_seconds: 60,
        };
        let paced = Facts {
            pace: Pace {
                pacing: Some(pacing),
                max_records_per_minute: None,
            },
            ..running()
        };
        let capped = Command::Amend(Amendment {
            start_at: None,
            pace: Some(PaceChange {
                pacing: None,
                max_records_per_minute: Some(Some(600)),
            }),
        });
        let events = decide(&paced, &capped, None).unwrap();
        assert_eq!(
            events,
            vec![EventPayload::PacingChanged {
                pacing: Some(pacing),
                max_records_per_minute: Some(600),
                api_key_id: None,
            }]
        );
        let after = paced.apply(&events[0]);
        assert_eq!(
            after.signature(),
            r#"----:{"pacing":{"batchSize":10,"intervalSeconds":60},"maxRecordsPerMinute":600}"#
        );
        assert_eq!(decide(&after, &capped, None), Ok(vec![]));
        let uncapped = Command::Amend(Amendment {
            start_at: None,
            pace: Some(PaceChange {
                pacing: Some(None),
                max_records_per_minute: None,
            }),
        });
        let events = decide(&after, &uncapped, None).unwrap();
        assert_eq!(
            Pace::recorded_by(&events[0]),
            Some(Pace {
                pacing: None,
                max_records_per_minute: Some(600)
            })
        );
    }

    #[test]
    fn a_scheduled_action_moves_and_repaces_in_one_step() {
        let facts = Facts {
            scheduled: true,
            ..running()
        };
        let both = Command::Amend(Amendment {
            start_at: Some(Timestamp::from_millis(1_900_000_000_000).unwrap()),
            pace: Some(PaceChange {
                pacing: None,
                max_records_per_minute: Some(Some(60)),
            }),
        });
        let events = decide(&facts, &both, None).map(|e| types(&e));
        assert_eq!(events, Ok(vec!["Rescheduled", "PacingChanged"]));
    }

    #[test]
    fn finished_and_cancelling_actions_refuse_all_but_a_repeated_cancel() {
        let finished = Facts {
            settled: 4,
            ..running()
        };
        let cancelling = Facts {
            cancelled: true,
            ..running()
        };
        for command in [Command::Pause, Command::Resume, Command::Cancel] {
            assert_eq!(decide(&finished, &command, None), Err(Refusal::Finished));
        }
        assert_eq!(decide(&cancelling, &Command::Cancel, None), Ok(vec![]));
        let cancelled_and_finished = Facts {
            cancelled: true,
            ..finished
        };
        assert_eq!(
            decide(&cancelled_and_finished, &Command::Cancel, None),
            Ok(vec![])
        );
        for command in [Command::Pause, Command::Resume] {
            assert_eq!(
                decide(&cancelling, &command, None),
                Err(Refusal::BeingCancelled)
            );
        }
    }

    #[test]
    fn the_signature_spells_each_fact_in_its_place() {
        let unpaced = r#"{"pacing":null,"maxRecordsPerMinute":null}"#;
        assert_eq!(running().signature(), format!("----:{unpaced}"));
        let all = Facts {
            settled: 4,
            cancelled: true,
            paused: true,
            scheduled: true,
            ..running()
        };
        assert_eq!(all.signature(), format!("FCPS:{unpaced}"));
        let legacy = Facts {
            paused: true,
            pace_source: PaceSource::Events,
            ..running()
        };
        assert_eq!(legacy.signature(), "--P-:");
    }

    #[test]
    fn an_action_without_batches_is_finished_from_the_start() {
        let empty = Facts::default();
        assert_eq!(
            decide(&empty, &Command::Pause, None),
            Err(Refusal::Finished)
        );
    }

    /// Facts Redis can hold: a cancel clears the pause.
    fn facts() -> impl Strategy<Value = Facts> {
        (
            0u32..5,
            0u32..6,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(batches, settled, cancelled, paused, scheduled)| Facts {
                batches,
                settled: settled.min(batches),
                cancelled,
                paused: paused && !cancelled,
                scheduled,
                ..Facts::default()
            })
    }

    fn control() -> impl Strategy<Value = Command> {
        let pacing = proptest::option::of((1u32..3, 1u32..3).prop_map(
            |(batch_size, interval_seconds)| Pacing {
                batch_size,
                interval_seconds,
            },
        ));
        let repace = (
            proptest::option::of(pacing),
            proptest::option::of(proptest::option::of(1u32..3)),
        )
            .prop_map(|(pacing, max_records_per_minute)| {
                Command::Amend(Amendment {
                    start_at: None,
                    pace: Some(PaceChange {
                        pacing,
                        max_records_per_minute,
                    }),
                })
            });
        prop_oneof![
            Just(Command::Cancel),
            Just(Command::Pause),
            Just(Command::Resume),
            repace,
        ]
    }

    proptest! {
        /// A command that has happened is so already: asked again on the facts its events
        /// made, it records nothing and is not refused.
        #[test]
        fn every_control_command_is_idempotent(facts in facts(), command in control()) {
            if let Ok(events) = decide(&facts, &command, None) {
                let after = events.iter().fold(facts, |facts, event| facts.apply(event));
                prop_assert_eq!(decide(&after, &command, None), Ok(vec![]));
            }
        }

        /// Nothing but a repeated cancel is accepted once an action has finished.
        #[test]
        fn a_finished_action_records_nothing(facts in facts(), command in control()) {
            prop_assume!(facts.finished());
            let decided = decide(&facts, &command, None);
            prop_assert!(matches!(decided, Err(Refusal::Finished)) || decided == Ok(vec![]));
        }

        /// Any sequence of commands leaves a cancelled action cancelled and never paused.
        #[test]
        fn cancel_is_final(facts in facts(), commands in proptest::collection::vec(control(), 0..8)) {
            let mut facts = facts;
            for command in &commands {
                if let Ok(events) = decide(&facts, command, None) {
                    facts = events.iter().fold(facts, |facts, event| facts.apply(event));
                }
                if facts.cancelled {
                    prop_assert!(!facts.paused);
                    prop_assert_eq!(facts.batch_turn(), BatchTurn::SettleUnprocessed);
                }
            }
            let cancelled_before = facts.cancelled;
            if let Ok(events) = decide(&facts, &Command::Pause, None) {
                facts = events.iter().fold(facts, |f, e| f.apply(e));
            }
            prop_assert_eq!(facts.cancelled, cancelled_before);
        }
    }
}
