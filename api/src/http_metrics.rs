//! Request metrics: a count and a latency histogram per method, route template and status,
//! and the refusals of the per-account limits. Served on `METRICS_PORT`, never on the
//! public port (docs/decisions/0055-metrics.md).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use infra::metrics::names;

use crate::error::ErrorCode;

/// The label of a request that matched no route: its path is the client's and could be
/// anything, so it is never a label.
const UNMATCHED: &str = "unmatched";

/// Runs inside the router (`Router::layer`), where the matched route template is known.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!(names::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(names::HTTP_REQUEST_DURATION, &labels)
        .record(started.elapsed().as_secs_f64());
    if let Some(code) = response.extensions().get::<ErrorCode>().copied() {
        if is_limit_refusal(code) {
            metrics::counter!(names::RATE_LIMIT_REFUSALS, "code" => code.as_str()).increment(1);
        }
    }
    response
}

fn is_limit_refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RateLimited | ErrorCode::TooManyStreams | ErrorCode::TooManyExports
    )
}

/// The methods the api serves, by name; any other (a client may send any token) is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_label_comes_from_a_closed_set() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let custom = Method::from_bytes(b"ANY-TENANT-WORD").unwrap();
        assert_eq!(method_label(&custom), "other");
    }
}
