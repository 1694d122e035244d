//! Capabilities by role. Every process reads through the `EventStore` (streams, metas,
//! API keys, limits, quarantine); what it may write comes only through the role it is
//! given, built once in its `run`:
//! - the api: `Submissions` (commit an action, reserve idempotency keys, cancel / pause /
//!   resume / PATCH, charge request budgets, finish an opening) and `AccountAdmin` (API
//!   keys and limit overrides);
//! - a consumer: `Settlement` for its workers (attempts, settlements, dead letters, parking)
//!   and `Scheduling` for its dispatcher and scheduler (dispatch, releases, abandoned
//!   openings, the worker registry);
//! - the projector: `Projection` (quarantine, the end of an archived stream).
//!
//! Code downstream of a process' wiring holds only its role, so "only the api commits
//! actions" or "only consumers settle batches" is a fact the compiler checks there. The
//! wiring itself (which roles a `run` builds) is the one place left to review: any crate
//! may construct any role. MongoDB is enforced by the deployment instead: the api only
//! reads, and can run as a read-only user (docs/operations.md, "MongoDB users").

use std::ops::Deref;

use crate::event_store::EventStore;

macro_rules! role {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(EventStore);

        impl $name {
            pub fn new(store: EventStore) -> Self {
                Self(store)
            }
        }

        impl Deref for $name {
            type Target = EventStore;

            fn deref(&self) -> &EventStore {
                &self.0
            }
        }
    };
}

role!(
    /// The api's writes to actions.
    Submissions
);
role!(
    /// The admin api's writes: API keys and limit overrides.
    AccountAdmin
);
role!(
    /// A consumer worker's writes: attempts, settlements, dead letters, parked batches.
    Settlement
);
role!(
    /// A consumer's dispatcher and scheduler: batches handed out, releases, openings left
    /// behind, the registry of live workers.
    Scheduling
);
role!(
    /// The projector's writes to Redis: quarantine, and dropping archived streams.
    Projection
);
