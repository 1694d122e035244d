//! The one error shape of the API: `{"error": {"code", "message", "details"}}`, where `code`
//! is a stable snake_case string clients can switch on.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable, snake_case.
    #[schema(example = "missing_field")]
    pub code: String,
    /// For humans; wording may change.
    pub message: String,
    /// Structured context, e.g. the offending field; `{}` when there is none.
    #[schema(value_type = Object)]
    pub details: Value,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Value,
    /// Whether the response challenges for a bearer token (`WWW-Authenticate: Bearer`).
    bearer_challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            bearer_challenge: false,
        }
    }

    /// A `401`: tells the client to send a bearer token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            bearer_challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn action_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no bulk action with this id",
        )
    }

    /// An `accountId` in a request that is not the API key's account.
    pub fn account_mismatch(named: &domain::AccountId) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "account_mismatch",
            "the accountId is not the account of the API key",
        )
        .with_details(json!({ "accountId": named.as_str() }))
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.bearer_challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A dependency (Redis, MongoDB) failed: the client may retry, nothing was half-done.
impl From<infra::StoreError> for ApiError {
    fn from(error: infra::StoreError) -> Self {
        match error {
            infra::StoreError::Redis(error) => unavailable("redis", &error),
            infra::StoreError::Corrupt(message) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
            }
            // Nothing became visible; the client's retry starts over.
            error @ infra::StoreError::StagingExpired(_) => unavailable("redis", &error),
        }
    }
}

impl From<mongodb::error::Error> for ApiError {
    fn from(error: mongodb::error::Error) -> Self {
        unavailable("mongodb", &error)
    }
}

pub(crate) fn unavailable(dependency: &str, error: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(dependency, %error, "dependency error");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "dependency_unavailable",
        format!("{dependency} is unavailable; retry later"),
    )
    .with_details(json!({ "dependency": dependency }))
}
