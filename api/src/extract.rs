//! Extractors whose rejection is the app's `ApiError`, so a handler starts with what it
//! needs already checked: whose action it is, and a JSON body of known fields.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use domain::ActionId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::AppState;

/// The `{action_id}` of the route, when it is an action of the caller's account. Another
/// account's action is `404`, exactly like one that does not exist: the answer must not
/// tell. Runs before any body is read.
pub struct OwnedAction(pub ActionId);

impl FromRequestParts<AppState> for OwnedAction {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("an action route without the api key check"))?;
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::action_not_found())?;
        let action = parse_action_id(&raw)?;
        tracing::Span::current().record("action", tracing::field::display(action));
        match state.store.account_of(action).await? {
            Some(account) if account == caller.account => Ok(OwnedAction(action)),
            _ => Err(ApiError::action_not_found()),
        }
    }
}

pub fn parse_action_id(raw: &str) -> Result<ActionId, ApiError> {
    ActionId::parse(raw).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidActionId,
            "action ids are 26-character ULIDs",
        )
        .with_details(json!({ "actionId": domain::text::bounded(raw, 64) }))
    })
}

/// A JSON object body read into `T`, a `#[serde(deny_unknown_fields)]` struct: `415` unless
/// the `Content-Type` is JSON, `400 invalid_body` unless it is an object, `400
/// unknown_field` naming the first field `T` does not have.
pub struct JsonObject<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonObject<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        require_json(request.headers())?;
        read_object(request).await.map(JsonObject)
    }
}

/// As `JsonObject`, whatever the `Content-Type`: for the admin api, whose clients (`curl
/// -d`) have always been able to leave it out.
pub struct AnyJsonObject<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AnyJsonObject<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        read_object(request).await.map(AnyJsonObject)
    }
}

/// The largest body of a command or admin request. Each is a few fields; a larger one is an
/// attack on memory (a JSON value takes many times its text), not a request.
pub const MAX_OBJECT_BODY_BYTES: usize = 64 * 1024;

async fn read_object<T: DeserializeOwned>(request: Request) -> Result<T, ApiError> {
    use futures::StreamExt;

    let mut chunks = request.into_body().into_data_stream();
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::bad_request(ErrorCode::UnreadableBody, "the body could not be read")
        })?;
        if body.len() + chunk.len() > MAX_OBJECT_BODY_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("this body may be at most {MAX_OBJECT_BODY_BYTES} bytes"),
            )
            .with_details(json!({ "limit": MAX_OBJECT_BODY_BYTES })));
        }
        body.extend_from_slice(&chunk);
    }
    parse_object(&body)
}

fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let Ok(object @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBody,
            "the body must be a JSON object",
        ));
    };
    serde_json::from_value(object).map_err(|error| refusal(&error.to_string()))
}

/// Serde's own words for an unknown field are `` unknown field `x`, expected one of `a`,
/// `b` `` (or `` expected `a` ``, or `there are no fields`); the name may itself hold
/// backticks, so the list is found from the end.
fn refusal(serde_message: &str) -> ApiError {
    let Some(rest) = serde_message.strip_prefix("unknown field `") else {
        let message = domain::text::bounded(serde_message, domain::text::MESSAGE_MAX_BYTES);
        return ApiError::bad_request(ErrorCode::InvalidBody, message);
    };
    let (field, expected) = match rest.rfind("`, expected ") {
        Some(at) => (&rest[..at], &rest[at + "`, expected ".len()..]),
        None => (
            rest.strip_suffix("`, there are no fields").unwrap_or(rest),
            "",
        ),
    };
    let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    ApiError::unknown_field(field, &allowed)
}

pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if media_type(content_type).eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "Content-Type must be application/json",
        )
        .with_details(json!({ "received": domain::text::bounded(content_type, 256) })))
    }
}

/// The essence of a `Content-Type`: `application/json; charset=utf-8` is `application/json`.
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// A body field whose absence and `null` mean different things: absent is `None`, present
/// (even `null`) is `Some`. Use with `#[serde(default, deserialize_with = "present")]`.
pub fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Sample {
        #[serde(default, deserialize_with = "present")]
        start_at: Option<Value>,
        #[allow(dead_code)]
        #[serde(default)]
        size: Option<Value>,
    }

    #[test]
    fn absent_and_null_differ() {
        let absent: Sample = parse_object(b"{}").unwrap();
        let null: Sample = parse_object(br#"{"startAt":null}"#).unwrap();
        assert_eq!(absent.start_at, None);
        assert_eq!(null.start_at, Some(Value::Null));
    }

    #[test]
    fn an_unknown_field_is_named_with_the_allowed_ones() {
        for (body, field) in [
            (r#"{"name":1}"#, "name"),
            (r#"{"a`, expected `b":1}"#, "a`, expected `b"),
            (r#"{"startAt":null,"$where":"1"}"#, "$where"),
        ] {
            let error = parse_object::<Sample>(body.as_bytes()).unwrap_err();
            assert_eq!(error.code(), ErrorCode::UnknownField, "{body}");
            assert_eq!(error.details()["field"], field, "{body}");
            assert_eq!(
                error.details()["allowed"],
                json!(["startAt", "size"]),
                "{body}"
            );
        }
    }

    #[test]
    fn anything_but_an_object_is_an_invalid_body() {
        for body in ["[1]", "1", "null", "{", ""] {
            let error = parse_object::<Sample>(body.as_bytes()).unwrap_err();
            assert_eq!(error.code(), ErrorCode::InvalidBody, "{body}");
        }
    }
}
