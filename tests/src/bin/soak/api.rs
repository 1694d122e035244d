//! The soak's client of the two api instances: every request goes to one of them at random
//! and is retried through outages (connection refused while an api is down, `503` while
//! Redis or MongoDB is, `429`), counting each retry. Submissions carry an `Idempotency-Key`,
//! so a retry after an answer that was lost returns the action the first attempt made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bulk_tests::{ApiClient, Reply};
use rand::Rng;
use reqwest::Method;
use serde_json::Value;

use crate::report::Tally;

/// How long a request is retried through outages before the soak gives up on it.
const RETRY_FOR: Duration = Duration::from_secs(240);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a submission sends: a JSON body, or a streamed upload with its settings in the query.
#[derive(Clone)]
pub enum Payload {
    Json(Value),
    Upload {
        /// `?accountId=...&entityType=...` (with the leading `?`).
        query: String,
        content_type: &'static str,
        bytes: Vec<u8>,
    },
    /// A JSON body no `Value` can hold (e.g. nested past the parser's limit), sent as the
    /// account's key.
    RawJson {
        account: String,
        bytes: Vec<u8>,
    },
}

impl Payload {
    pub fn format(&self) -> &'static str {
        match self {
            Payload::Json(_) | Payload::RawJson { .. } => "json",
            Payload::Upload { content_type, .. } if content_type.contains("csv") => "csv",
            Payload::Upload { .. } => "ndjson",
        }
    }
}

#[derive(Clone)]
pub struct Api {
    instances: Vec<ApiClient>,
    pub tally: Arc<Tally>,
}

impl Api {
    pub fn new(instances: Vec<ApiClient>, tally: Arc<Tally>) -> Self {
        Self { instances, tally }
    }

    fn pick(&self) -> &ApiClient {
        let index = rand::rng().random_range(0..self.instances.len());
        &self.instances[index]
    }

    /// A client for reading the platform's database directly.
    pub fn database(&self) -> &ApiClient {
        &self.instances[0]
    }

    pub fn remember_owner(&self, action: &str, account: &str) {
        // The instances share one owner map.
        self.instances[0].remember_owner(action, account);
    }

    /// One attempt at a GET: the body of a `200`, `None` on anything else (try again later).
    pub async fn peek(&self, path: &str) -> Option<Value> {
        match self.pick().get_json(path).await {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Sends until an answer that is not an outage; `what` names the request in the table.
    pub async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply> {
        self.retrying(what, || async {
            self.pick()
                .send(
                    method.clone(),
                    path,
                    body,
                    &[("accept", "application/json")],
                )
                .await
        })
        .await
    }

    /// Submits with `Idempotency-Key: key`, retrying through outages.
    pub async fn submit(&self, payload: &Payload, key: &str) -> Result<Reply> {
        let headers = [("idempotency-key", key)];
        self.retrying("submit", || async {
            let client = self.pick();
            match payload {
                Payload::Json(body) => {
                    client
                        .send(Method::POST, "/bulk-actions", Some(body), &headers)
                        .await
                }
                Payload::Upload {
                    query,
                    content_type,
                    bytes,
                } => {
                    let path = format!("/bulk-actions{query}");
                    client
                        .upload(&path, content_type, bytes.clone(), &headers)
                        .await
                }
                Payload::RawJson { account, bytes } => {
                    let bearer = format!("Bearer {}", client.key_for(account).await?);
                    let headers = [headers[0], ("authorization", bearer.as_str())];
                    client
                        .upload("/bulk-actions", "application/json", bytes.clone(), &headers)
                        .await
                }
            }
        })
        .await
    }

    async fn retrying<F, Fut>(&self, what: &str, mut send: F) -> Result<Reply>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Reply>>,
    {
        let deadline = Instant::now() + RETRY_FOR;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let (reason, wait) = match send().await {
                Ok(reply) if reply.status == 429 => {
                    let after = reply
                        .header("retry-after")
                        .and_then(|seconds| seconds.parse::<u64>().ok())
                        .unwrap_or(1);
                    ("429".to_owned(), Duration::from_secs(after))
                }
                Ok(reply) if reply.status >= 500 => {
                    if reply.status != 503 {
                        self.tally.bump(
                            "answers 5xx other than 503",
                            format!("{what} {}: {}", reply.status, reply.body["error"]["code"]),
                        );
                    }
                    (reply.status.to_string(), backoff)
                }
                Ok(reply) => return Ok(reply),
                Err(error) => (transport_reason(&error), backoff),
            };
            self.tally
                .bump("retries through outages", format!("{what}: {reason}"));
            if Instant::now() + wait > deadline {
                bail!("{what}: still failing after {RETRY_FOR:?} ({reason})");
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn transport_reason(error: &anyhow::Error) -> String {
    match error.downcast_ref::<reqwest::Error>() {
        Some(error) if error.is_timeout() => "timeout".into(),
        Some(error) if error.is_connect() => "connection refused".into(),
        Some(_) => "connection lost".into(),
        None => "client error".into(),
    }
}
