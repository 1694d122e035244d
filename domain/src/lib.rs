//! The pure core of the bulk action platform.
//!
//! Everything here is a value or a function over values: parsing and normalising input,
//! planning an action into batches, the events an action is made of, and the fold from
//! events to the views clients query. No I/O, no clock reads, no randomness that a caller
//! cannot supply: that is what makes the fold replayable and these rules testable.

pub mod action;
pub mod change;
pub mod entity;
pub mod event;
pub mod fields;
pub mod ids;
pub mod key;
pub mod lifecycle;
pub mod live;
pub mod outcome;
pub mod pacing;
pub mod plan;
pub mod projection;
pub mod rate;
pub mod record;
pub mod results;
pub mod schedule;
pub mod spreadsheet;
pub mod text;
pub mod time;
pub mod view;
pub mod webhook;

pub use action::{ActionStatus, ActionType};
pub use change::{RecordChange, RecordRules};
pub use entity::{EntitySpec, EntityType};
pub use event::{EventEnvelope, EventPayload, SCHEMA_VERSION};
pub use fields::{FieldChange, FieldValue};
pub use ids::{AccountId, ActionId};
pub use key::MatchBy;
pub use outcome::{OutcomeCode, OutcomeStatus, RecordOutcome};
pub use pacing::Pacing;
pub use plan::{
    plan_action, plan_with, ActionPlan, Batch, PlanSummary, Planned, PlannedRecord, Planner,
};
pub use projection::ProjectionError;
pub use record::{Email, RecordError};
pub use schedule::ScheduleError;
pub use time::Timestamp;
pub use view::{ActionStats, ActionView, FoldError};
