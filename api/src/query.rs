//! Query-string parameters, checked strictly: an unknown or malformed parameter is a `400
//! invalid_query`, never silently ignored and never passed to a database query as is.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde_json::json;

use crate::error::{ApiError, ErrorCode};

/// The query string's pairs, in order; one that cannot be read is `400 invalid_query`.
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|Query(pairs)| QueryPairs(pairs))
            .map_err(|rejection| {
                ApiError::bad_request(ErrorCode::InvalidQuery, rejection.body_text())
            })
    }
}

pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub fn parse(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut params = HashMap::new();
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(
                    invalid(&name, "is not a known parameter").with_details(json!({
                        "parameter": domain::text::bounded(&name, domain::text::ECHO_MAX_BYTES),
                        "allowed": allowed,
                    })),
                );
            }
            if params.insert(name.clone(), value).is_some() {
                return Err(invalid(&name, "is given more than once"));
            }
        }
        Ok(Self(params))
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn parsed<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        match self.text(name) {
            None => Ok(None),
            Some(raw) => parse(raw)
                .map(Some)
                .ok_or_else(|| invalid(name, "has an invalid value")),
        }
    }

    /// An integer within `min..=max`; above `max` is capped, below `min` is an error.
    pub fn capped(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        match self.text(name) {
            None => Ok(default),
            Some(raw) => match raw.parse::<u64>() {
                Ok(value) if value >= min => Ok(value.min(max)),
                _ => Err(invalid(
                    name,
                    &format!("must be an integer of at least {min}"),
                )),
            },
        }
    }
}

pub fn invalid(name: &str, problem: &str) -> ApiError {
    ApiError::bad_request(
        ErrorCode::InvalidQuery,
        format!("query parameter {} {problem}", domain::text::quoted(name)),
    )
    .with_details(json!({ "parameter": domain::text::bounded(name, domain::text::ECHO_MAX_BYTES) }))
}
