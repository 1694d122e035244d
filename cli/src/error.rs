//! What can go wrong inside the CLI, typed so `main` can pick the exit code and print the
//! API's own `code` and `message` rather than a transport-level description.

use std::path::PathBuf;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error body `{error: {code, message, details}}`.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Value,
    },
    #[error("cannot reach the api at {url}: {}", chain(source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The connection broke while the file was going up. The api may have refused the
    /// upload early (a bad CSV header, a limit) and closed the connection before its
    /// answer could be read: the TCP reset discards it.
    #[error("the upload was cut off: {}; if the api refused the file early (e.g. its CSV header), sending its first lines shows the answer", chain(source))]
    UploadCut {
        #[source]
        source: reqwest::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The command line asks for something the CLI cannot do.
    #[error("{0}")]
    Usage(String),
    /// The API answered something this CLI does not understand (e.g. a proxy's HTML page).
    #[error("unexpected answer from the api: {0}")]
    Protocol(String),
}

impl CliError {
    pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::File { path, source }
    }

    /// The error as the API would have written it, so `--json` callers parse one shape
    /// whatever failed.
    pub fn to_json(&self) -> Value {
        let (code, message, details) = match self {
            Self::Api {
                code,
                message,
                details,
                ..
            } => (code.clone(), message.clone(), details.clone()),
            Self::Transport { .. } => ("unreachable".into(), self.to_string(), Value::Null),
            Self::UploadCut { .. } => ("upload_cut".into(), self.to_string(), Value::Null),
            Self::File { .. } => ("file_error".into(), self.to_string(), Value::Null),
            Self::Usage(_) => ("usage".into(), self.to_string(), Value::Null),
            Self::Protocol(_) => ("unexpected_answer".into(), self.to_string(), Value::Null),
        };
        serde_json::json!({"error": {"code": code, "message": message, "details": details}})
    }
}

/// An error and its causes on one line: reqwest's own message ("error sending request")
/// hides the part a person can act on ("connection refused").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
