//! Every request has an id: the caller's `X-Request-Id` when it is a short token, else a
//! fresh ULID. It names the request's span, comes back in the response's `X-Request-Id`,
//! and is what a `500` shows the client instead of its cause.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-chosen id that is kept; anything longer or stranger is replaced.
const MAX_LEN: usize = 64;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served on this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Outermost middleware: the id, the request's span (whose `account` and `action` fields
/// the auth check and the action extractor fill in), and the response header.
pub async fn assign(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_token(id))
        .map_or_else(|| ulid::Ulid::new().to_string(), str::to_owned);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        account = tracing::field::Empty,
        action = tracing::field::Empty,
    );
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(request).instrument(span))
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER.clone(), value);
    }
    response
}

fn is_token(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_tokens_are_taken_from_the_caller() {
        assert!(is_token("01J9Z6W5Q3R8T2Y4U6I8O0P2A4"));
        assert!(is_token("trace-1.2_3"));
        for hostile in ["", "a b", "x\ny", "ü", &"a".repeat(65)] {
            assert!(!is_token(hostile), "{hostile:?}");
        }
    }
}
