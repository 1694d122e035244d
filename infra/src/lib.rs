//! Adapters shared by the `api`, `consumer` and `projector` binaries.
//!
//! `domain` decides; this crate stores and moves. The Redis layout (keys, streams, Lua
//! scripts) and the MongoDB view documents are defined once, here, so that every binary
//! agrees on them.

pub mod api_keys;
pub mod clock;
mod commit;
pub mod config;
pub mod event_store;
pub mod fields;
pub mod flow;
mod kept;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod mongo;
pub mod opening;
pub mod quarantine;
pub mod redis_conn;
pub mod results;
pub mod retries;
pub mod retry;
pub mod roles;
pub mod scripts;
mod settlement;
pub mod shutdown;
pub mod staging;
pub mod telemetry;
pub mod views;
pub mod webhooks;
pub mod work;

pub use config::StoreConfig;
pub use event_store::{EventStore, StoreError, StoredEvent};
pub use keys::Keys;
pub use roles::{AccountAdmin, Projection, Scheduling, Settlement, Submissions};
pub use settlement::AttemptStart;
