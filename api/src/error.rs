//! The one error shape of the API: `{"error": {"code", "message", "details"}}`, where `code`
//! is a stable snake_case string clients can switch on.

use axum::http::StatusCode;
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
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
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
        (self.status, Json(body)).into_response()
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

fn unavailable(dependency: &str, error: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(dependency, %error, "dependency error");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "dependency_unavailable",
        format!("{dependency} is unavailable; retry later"),
    )
    .with_details(json!({ "dependency": dependency }))
}
