//! Structured logs on stderr. `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` emits
//! one JSON object per line for log shippers.

use tracing_subscriber::{fmt, EnvFilter};

pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if installed.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}
