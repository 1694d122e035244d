//! The HTTP client of the public API: one API key, error bodies turned into
//! [`CliError::Api`], and the few retries a reader of views deserves.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::error::CliError;

/// Reads of views are retried this many times on `429` and `503`: both say "later", and a
/// script polling `bulk status` should not fail on a moment of contention.
const READ_ATTEMPTS: u32 = 4;
/// A finished action's results are asked for again this many times while its last
/// records are projected (`409 results_not_ready`).
const NOT_READY_ATTEMPTS: u32 = 30;
/// A `Retry-After` longer than this is not waited out: the caller is told instead.
const LONGEST_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    pub fn new(base: &str, key: &str) -> Result<Self, CliError> {
        let parsed = url::Url::parse(base)
            .map_err(|error| CliError::Usage(format!("--api-url {base:?}: {error}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!(
                "--api-url {base:?}: expected an http:// or https:// URL"
            )));
        }
        // The header value is checked here, once, so a key with a newline is a usage
        // error rather than a panic or an opaque builder error later.
        HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| CliError::Usage("the API key holds characters a header cannot".into()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("bulk-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| CliError::Transport {
                url: base.to_owned(),
                source,
            })?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.key)
    }

    /// `send`, waiting out a finished action whose last records are not projected yet (a
    /// `409` with `Retry-After`: `results_not_ready`, a moment after the final message).
    /// `build` makes the request again for each try; such a refusal created nothing.
    pub async fn send_when_ready(
        &self,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, CliError> {
        let mut attempt = 1;
        loop {
            let response = build()
                .send()
                .await
                .map_err(|source| self.transport(source))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let wait = retry_after(response.headers());
            match wait {
                Some(wait)
                    if status == StatusCode::CONFLICT
                        && attempt < NOT_READY_ATTEMPTS
                        && wait <= LONGEST_WAIT =>
                {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return Err(api_error(response).await),
            }
        }
    }

    /// Sends `request` and hands back the response when its status is a success; an error
    /// answer becomes [`CliError::Api`].
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request
            .send()
            .await
            .map_err(|source| self.transport(source))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(response).await)
    }

    /// `GET path` answered as JSON, retried on `429` and `503`.
    pub async fn get_json(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        let mut attempt = 1;
        loop {
            let request = self
                .request(Method::GET, path)
                .query(query)
                .timeout(Duration::from_secs(60));
            let response = request
                .send()
                .await
                .map_err(|source| self.transport(source))?;
            let status = response.status();
            if status.is_success() {
                return json_of(response).await;
            }
            let wait = retry_after(response.headers()).unwrap_or(Duration::from_secs(1));
            let retriable = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            if !retriable || attempt >= READ_ATTEMPTS || wait > LONGEST_WAIT {
                return Err(api_error(response).await);
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// `POST path` with an optional JSON body. Never retried: a second submission or
    /// retry would be another action unless the caller gave an idempotency key.
    pub async fn post_json(
        &self,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, CliError> {
        let mut request = self
            .request(Method::POST, path)
            .timeout(Duration::from_secs(120));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        json_of(self.send(request).await?).await
    }

    /// `POST /bulk-actions` with a streamed body.
    pub async fn submit(
        &self,
        query: &[(&str, String)],
        content_type: &str,
        body: reqwest::Body,
        idempotency_key: Option<&str>,
    ) -> Result<Value, CliError> {
        let mut request = self
            .request(Method::POST, "/bulk-actions")
            .query(query)
            .header(CONTENT_TYPE, content_type)
            .header(ACCEPT, "application/json")
            .body(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.map_err(|source| {
            if source.is_connect() {
                self.transport(source)
            } else {
                CliError::UploadCut { source }
            }
        })?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        json_of(response).await
    }

    fn transport(&self, source: reqwest::Error) -> CliError {
        CliError::Transport {
            url: self.base.clone(),
            source,
        }
    }
}

/// How long a `Retry-After` (in seconds) asks to wait.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

pub async fn json_of(response: Response) -> Result<Value, CliError> {
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|error| CliError::Protocol(format!("reading a {status} answer: {error}")))?;
    serde_json::from_str(&text).map_err(|_| {
        CliError::Protocol(format!(
            "{status} with a body that is not JSON: {}",
            prefix(&text)
        ))
    })
}

/// The API's error body, or a description of whatever answered instead (a proxy, a
/// server that is not this API).
pub async fn api_error(response: Response) -> CliError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    error_of(status.as_u16(), &text)
}

pub fn error_of(status: u16, text: &str) -> CliError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let error = &body["error"];
    match (error["code"].as_str(), error["message"].as_str()) {
        (Some(code), Some(message)) => CliError::Api {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            details: error["details"].clone(),
        },
        _ => CliError::Protocol(format!("{status}: {}", prefix(text))),
    }
}

fn prefix(text: &str) -> String {
    let cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_keeps_the_apis_code_and_message() {
        let error = error_of(
            404,
            r#"{"error":{"code":"not_found","message":"no such action","details":{"a":1}}}"#,
        );
        match error {
            CliError::Api {
                status,
                code,
                message,
                details,
            } => {
                assert_eq!((status, code.as_str()), (404, "not_found"));
                assert_eq!(message, "no such action");
                assert_eq!(details["a"], 1);
            }
            other => panic!("expected an api error, got {other:?}"),
        }
    }

    #[test]
    fn a_foreign_answer_is_described_not_misread() {
        let error = error_of(502, "<html>bad gateway</html>");
        assert!(matches!(error, CliError::Protocol(ref m) if m.contains("502")));
    }

    #[test]
    fn a_url_that_is_not_http_is_a_usage_error() {
        assert!(matches!(
            Client::new("ftp://x", "k"),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            Client::new("http://x", "bad\nkey"),
            Err(CliError::Usage(_))
        ));
        assert!(Client::new("http://127.0.0.1:3000/", "k").is_ok());
    }
}
