//! Per-account request rate limit, shared by every api instance through Redis (GCRA, see
//! `domain::rate`). Handlers call `admit` once they know the request's account; the
//! `stamp_quota` middleware then writes the budget into whatever response goes out,
//! success or error, in the IETF draft fields and the widely parsed older ones.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use domain::rate::Quota;
use domain::AccountId;
use serde_json::json;

use crate::error::{ApiError, ErrorCode};
use crate::AppState;

pub const POLICY: &str = "per-minute";

/// Where a handler leaves the request's quota for the middleware.
#[derive(Clone, Default)]
pub struct QuotaSlot(Arc<Mutex<Option<Quota>>>);

impl QuotaSlot {
    fn set(&self, quota: Quota) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(quota);
        }
    }

    fn take(&self) -> Option<Quota> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Charges one request to `account`; a `429 rate_limited` when its budget is spent, which
/// charges nothing.
pub async fn admit(
    state: &AppState,
    slot: &QuotaSlot,
    account: &AccountId,
) -> Result<(), ApiError> {
    let quota = state
        .store
        .admit_request(
            account,
            state.config.requests_per_minute,
            state.config.request_burst_seconds,
        )
        .await?;
    slot.set(quota);
    if quota.allowed {
        return Ok(());
    }
    tracing::info!(%account, retry_after_secs = quota.retry_after_secs, "request refused: rate limit");
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        format!(
            "account {account} exceeded its limit of {} requests per minute; retry after {} s",
            quota.limit, quota.retry_after_secs
        ),
    )
    .with_details(json!({
        "policy": POLICY,
        "accountId": account.as_str(),
        "limit": quota.limit,
        "windowSeconds": 60,
        "retryAfterSeconds": quota.retry_after_secs,
    })))
}

pub async fn stamp_quota(mut request: Request, next: Next) -> Response {
    let slot = QuotaSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(quota) = slot.take() {
        write_headers(response.headers_mut(), &quota);
    }
    response
}

fn write_headers(headers: &mut HeaderMap, quota: &Quota) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    put(
        "ratelimit-policy",
        format!("\"{POLICY}\";q={};w=60", quota.limit),
    );
    put(
        "ratelimit",
        format!("\"{POLICY}\";r={};t={}", quota.remaining, quota.reset_secs),
    );
    put("ratelimit-limit", quota.limit.to_string());
    put("ratelimit-remaining", quota.remaining.to_string());
    put("ratelimit-reset", quota.reset_secs.to_string());
    if !quota.allowed {
        put("retry-after", quota.retry_after_secs.max(1).to_string());
    }
}
