//! The one error shape of the API: `{"error": {"code", "message", "details"}}`, where `code`
//! is a stable snake_case string clients can switch on, listed once in [`ErrorCode`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::request_id;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable, snake_case.
    pub code: ErrorCode,
    /// For humans; wording may change.
    pub message: String,
    /// Structured context, e.g. the offending field; `{}` when there is none. A `500`
    /// carries the `requestId` to quote to the operator, never the cause.
    #[schema(value_type = Object)]
    pub details: Value,
}

/// Every code the API answers with. Renaming one breaks clients: add, never rename.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    // The request as a whole.
    RouteNotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
    PayloadTooLarge,
    UnreadableBody,
    MalformedJson,
    InvalidBody,
    UnknownField,
    MissingField,
    InvalidField,
    InvalidQuery,
    InvalidIdempotencyKey,
    IdempotencyKeyReused,
    // Who is asking.
    Unauthorized,
    AccountMismatch,
    RateLimited,
    /// The account has as many live event streams open on this api process as it may.
    TooManyStreams,
    /// The account is downloading as many result files on this api process as it may.
    TooManyExports,
    AdminDisabled,
    InvalidAccountId,
    ApiKeyNotFound,
    // A submission.
    EmptyData,
    TooManyRecords,
    TooManyBatches,
    RecordTooLarge,
    InvalidCsvHeader,
    UnsupportedEntityType,
    UnsupportedActionType,
    InvalidScheduledFor,
    ScheduledForInPast,
    ScheduledForTooFar,
    InvalidPacing,
    InvalidMatchBy,
    // An account's definitions.
    InvalidFieldDefinition,
    // An existing action.
    InvalidActionId,
    NotFound,
    EmptyPatch,
    ActionFinished,
    /// The action has been retried as often as it may be (`domain::view::RETRIES_MAX`).
    TooManyRetries,
    /// The action has finished but its results are not all projected yet (or its
    /// projection is quarantined): its result files and retries would miss records.
    ResultsNotReady,
    ActionCancelling,
    ActionAlreadyReleased,
    /// Commands on the action raced each other too long; retry after `Retry-After`.
    ActionContended,
    /// A retry of an action that has not finished: its results are not final.
    ActionNotFinished,
    /// A retry of an action whose events are archived (retention): download its failed
    /// file and submit it instead.
    ActionArchived,
    /// No result row matches a retry's statuses and codes, or none kept its fields.
    NothingToRetry,
    // Webhooks.
    InvalidWebhookUrl,
    /// Not https, or a private, loopback, link-local or metadata address (SSRF guard).
    WebhookUrlNotAllowed,
    TooManyWebhooks,
    WebhookNotFound,
    DeliveryNotFound,
    DeliveryPending,
    /// A secret rotation's overlap is still running: a second would drop the original
    /// secret at once.
    RotationInProgress,
    // Ours, not the client's.
    DependencyUnavailable,
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    details: Value,
    /// Whether the response challenges for a bearer token (`WWW-Authenticate: Bearer`).
    challenge: Option<Challenge>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Challenge {
    Bearer,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            challenge: None,
            retry_after: None,
        }
    }

    /// A `401`: tells the client to send a bearer token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            challenge: Some(Challenge::Bearer),
            ..Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
        }
    }

    /// A `500`. `cause` goes to the log with the request id; the client gets the id only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            cause.to_string(),
        )
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn action_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no bulk action with this id",
        )
    }

    /// An `accountId` in a request that is not the API key's account.
    pub fn account_mismatch(named: &domain::AccountId) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorCode::AccountMismatch,
            "the accountId is not the account of the API key",
        )
        .with_details(json!({ "accountId": named.as_str() }))
    }

    /// An invalid `field` of a body, with `message` saying why.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::bad_request(ErrorCode::InvalidField, message).with_details(json!({ "field": field }))
    }

    /// `field` is not one of `allowed`. The echo of the name is bounded: it is the client's.
    pub fn unknown_field(field: &str, allowed: &[&str]) -> Self {
        Self::bad_request(
            ErrorCode::UnknownField,
            format!("unknown field {}", domain::text::quoted(field)),
        )
        .with_details(json!({
            "field": domain::text::bounded(field, domain::text::ECHO_MAX_BYTES),
            "allowed": allowed,
        }))
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn details(&self) -> &Value {
        &self.details
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (message, details) = if self.status.is_server_error() {
            let request_id = request_id::current();
            if self.code == ErrorCode::InternalError {
                tracing::error!(request_id, cause = %self.message, "request failed");
                let message = "internal error; quote the requestId to the operator".to_owned();
                (message, json!({ "requestId": request_id }))
            } else {
                tracing::error!(request_id, code = self.code.as_str(), message = %self.message, "request failed");
                (self.message, self.details)
            }
        } else {
            (self.message, self.details)
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message,
                details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(Challenge::Bearer) = self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // For the metrics middleware, which counts refusals by code (never sent).
        response.extensions_mut().insert(self.code);
        response
    }
}

/// A dependency (Redis, MongoDB) failed: the client may retry, nothing was half-done.
impl From<infra::StoreError> for ApiError {
    fn from(error: infra::StoreError) -> Self {
        match error {
            infra::StoreError::Redis(error) => unavailable("redis", &error),
            infra::StoreError::Corrupt(message) => ApiError::internal(message),
            // Nothing became visible; the client's retry starts over.
            error @ infra::StoreError::StagingExpired(_) => unavailable("redis", &error),
            infra::StoreError::Contended(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ActionContended,
                "other commands on this action kept changing it; retry in a moment",
            )
            .with_retry_after(1),
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
        ErrorCode::DependencyUnavailable,
        format!("{dependency} is unavailable; retry later"),
    )
    .with_details(json!({ "dependency": dependency }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_and_the_body_spell_every_code_alike() {
        use strum::IntoEnumIterator;
        for code in ErrorCode::iter() {
            assert_eq!(json!(code), json!(code.as_str()));
        }
    }

    #[test]
    fn codes_are_the_stable_snake_case_strings() {
        assert_eq!(
            ErrorCode::ScheduledForInPast.as_str(),
            "scheduled_for_in_past"
        );
        assert_eq!(ErrorCode::InvalidCsvHeader.as_str(), "invalid_csv_header");
        assert_eq!(ErrorCode::NotFound.as_str(), "not_found");
    }
}
