//! Operator endpoints, behind the `ADMIN_TOKEN` bearer token (disabled without one).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use domain::AccountId;
use infra::flow::AccountLimits;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::auth;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::AnyJsonObject;
use crate::AppState;

/// An account's limits: what applies, and which of it is the account's own.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsView {
    account_id: String,
    /// Api requests per minute that apply to the account.
    requests_per_minute: u32,
    /// Records applied per minute that apply to the account.
    records_per_minute: u32,
    overrides: LimitOverrides,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitOverrides {
    requests_per_minute: Option<u32>,
    records_per_minute: Option<u32>,
}

/// The body of `PUT /admin/accounts/{accountId}/limits`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsRequest {
    /// Api requests per minute; absent or `null`: the default.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1)]
    requests_per_minute: Option<Value>,
    /// Records applied per minute; absent or `null`: the default.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1)]
    records_per_minute: Option<Value>,
}

/// The `{account_id}` of an admin route, once the admin token has been checked; nothing of
/// the request is read before that.
pub struct AdminAccount(pub AccountId);

impl FromRequestParts<AppState> for AdminAccount {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(state, &parts.headers)?;
        let invalid = |message: String| {
            ApiError::bad_request(ErrorCode::InvalidAccountId, message)
                .with_details(json!({ "field": "accountId" }))
        };
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| invalid(rejection.body_text()))?;
        let raw = params
            .get("account_id")
            .map(String::as_str)
            .unwrap_or_default();
        let account = AccountId::parse(raw).map_err(|error| invalid(error.to_string()))?;
        tracing::Span::current().record("account", tracing::field::display(&account));
        Ok(AdminAccount(account))
    }
}

/// Read an account's limits.
#[utoipa::path(get, path = "/admin/accounts/{accountId}/limits", tag = "admin",
    params(("accountId" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = LimitsView),
        (status = 400, body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Admin endpoints are disabled (no ADMIN_TOKEN)", body = ErrorBody),
    ))]
pub async fn get_limits(
    State(state): State<AppState>,
    AdminAccount(account): AdminAccount,
) -> Result<Json<LimitsView>, ApiError> {
    let overrides = state.store.account_limits(&account).await?;
    Ok(Json(view(&state, &account, overrides)))
}

/// Set an account's own limits (replacing earlier ones); `null` or absent returns a limit
/// to the default. Applies to the next request and the next dispatched batch.
#[utoipa::path(put, path = "/admin/accounts/{accountId}/limits", tag = "admin",
    params(("accountId" = String, Path)),
    security(("admin_token" = [])),
    request_body(content = LimitsRequest, content_type = "application/json"),
    responses(
        (status = 200, body = LimitsView),
        (status = 400, body = ErrorBody),
        (status = 413, description = "A body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Admin endpoints are disabled (no ADMIN_TOKEN)", body = ErrorBody),
    ))]
pub async fn put_limits(
    State(state): State<AppState>,
    AdminAccount(account): AdminAccount,
    AnyJsonObject(request): AnyJsonObject<LimitsRequest>,
) -> Result<Json<LimitsView>, ApiError> {
    let limit = |name: &'static str, raw: Option<Value>| -> Result<Option<u32>, ApiError> {
        match raw {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                .map(|n| Some(n as u32))
                .ok_or_else(|| {
                    ApiError::invalid_field(name, format!("{name} must be a positive integer"))
                }),
        }
    };
    let overrides = AccountLimits {
        requests_per_minute: limit("requestsPerMinute", request.requests_per_minute)?,
        records_per_minute: limit("recordsPerMinute", request.records_per_minute)?,
    };
    let defaults = infra::flow::DefaultLimits {
        records_per_minute: state.config.records_per_minute,
        requests_per_minute: state.config.requests_per_minute,
    };
    state
        .admin
        .set_account_limits(&account, overrides, defaults)
        .await?;
    tracing::info!(%account, ?overrides, "account limits set");
    Ok(Json(view(&state, &account, overrides)))
}

/// A new API key; `apiKey` is shown this once and stored only as a hash.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    key_id: String,
    #[schema(example = "bka_01JDQ6V4J8Q0Y5Z6X7W8V9T0S1.q6kT...")]
    api_key: String,
    account_id: String,
    created_at: domain::Timestamp,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    key_id: String,
    created_at: domain::Timestamp,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    items: Vec<KeyInfo>,
}

/// Make an API key for an account (the account exists once it has a key).
#[utoipa::path(post, path = "/admin/accounts/{accountId}/api-keys", tag = "admin",
    params(("accountId" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 201, body = CreatedKey),
        (status = 400, body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Admin endpoints are disabled (no ADMIN_TOKEN)", body = ErrorBody),
    ))]
pub async fn create_key(
    State(state): State<AppState>,
    AdminAccount(account): AdminAccount,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let minted = auth::mint_key();
    let created_at = infra::clock::now();
    state
        .admin
        .store_api_key(&infra::api_keys::StoredKey {
            key_id: minted.key_id.clone(),
            account: account.clone(),
            digest: minted.digest,
            created_at,
        })
        .await?;
    tracing::info!(%account, key_id = %minted.key_id, "api key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key_id: minted.key_id,
            api_key: minted.token,
            account_id: account.as_str().to_owned(),
            created_at,
        }),
    ))
}

/// List an account's API keys (ids only; secrets are never stored).
#[utoipa::path(get, path = "/admin/accounts/{accountId}/api-keys", tag = "admin",
    params(("accountId" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = KeyList),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn list_keys(
    State(state): State<AppState>,
    AdminAccount(account): AdminAccount,
) -> Result<Json<KeyList>, ApiError> {
    let items = state
        .store
        .api_keys_of(&account)
        .await?
        .into_iter()
        .map(|key| KeyInfo {
            key_id: key.key_id,
            created_at: key.created_at,
        })
        .collect();
    Ok(Json(KeyList { items }))
}

/// Revoke an API key: requests with it are `401` from now on.
#[utoipa::path(delete, path = "/admin/accounts/{accountId}/api-keys/{keyId}", tag = "admin",
    params(("accountId" = String, Path), ("keyId" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such key for this account, or admin disabled", body = ErrorBody),
    ))]
pub async fn revoke_key(
    State(state): State<AppState>,
    AdminAccount(account): AdminAccount,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (_, key_id) = path;
    if ulid::Ulid::from_string(&key_id).is_err()
        || !state.admin.revoke_api_key(&account, &key_id).await?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ApiKeyNotFound,
            "this account has no API key with that id",
        ));
    }
    tracing::info!(%account, %key_id, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

fn view(state: &AppState, account: &AccountId, overrides: AccountLimits) -> LimitsView {
    LimitsView {
        account_id: account.as_str().to_owned(),
        requests_per_minute: overrides
            .requests_per_minute
            .unwrap_or(state.config.requests_per_minute),
        records_per_minute: overrides
            .records_per_minute
            .unwrap_or(state.config.records_per_minute),
        overrides: LimitOverrides {
            requests_per_minute: overrides.requests_per_minute,
            records_per_minute: overrides.records_per_minute,
        },
    }
}

/// Compares digests, not the tokens, so the comparison's time says nothing about how much
/// of a guess was right.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.config.admin_token else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::AdminDisabled,
            "admin endpoints are disabled: set ADMIN_TOKEN to enable them",
        ));
    };
    let presented = auth::bearer(headers).unwrap_or_default();
    if Sha256::digest(presented.as_bytes()) == Sha256::digest(expected.as_bytes()) {
        Ok(())
    } else {
        Err(auth::unauthorized(
            "admin endpoints need `Authorization: Bearer <ADMIN_TOKEN>`",
        ))
    }
}
