//! Test harness: real services as child processes, and the platform's own components
//! running in-process over real connections.
//!
//! `Services::start` launches a private `redis-server`, PostgreSQL and FerretDB on free
//! ports with temporary data directories; dropping it stops them. `TestApp::spawn` runs the
//! api, consumers and projector against those services.

mod app;
mod services;

pub use app::{AppOptions, TestApp};
pub use services::Services;
