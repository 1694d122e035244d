//! An account's webhook endpoints and their deliveries, behind the account's API key:
//! register, list, read, delete, rotate the secret, list deliveries, redeliver one. Another
//! account's endpoint is `404`, like one that does not exist. The deliveries themselves are
//! made by the consumers (`consumer::deliverer`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use domain::webhook::{self, UrlError, WebhookEvent};
use domain::Timestamp;
use infra::webhooks::{
    Delivery, DeliveryState, Endpoint, Redelivery, KEEP_DELIVERIES, MAX_ENDPOINTS,
    ROTATION_OVERLAP_MS,
};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::JsonObject;
use crate::AppState;

/// The body of `POST /webhooks`.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the body, which is read field by field for precise errors
pub struct NewWebhook {
    /// `https` (private and loopback addresses refused), at most 2048 bytes.
    #[schema(example = "https://hooks.example.com/crm", max_length = 2048)]
    url: String,
    /// What to send; at least one.
    #[schema(min_items = 1)]
    events: Vec<WebhookEvent>,
}

/// A registered endpoint; its secret is shown only when made.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    #[schema(example = "ep_01JDQ6V4J8Q0Y5Z6X7W8V9T0S1")]
    id: String,
    url: String,
    events: Vec<WebhookEvent>,
    created_at: Timestamp,
    /// Set once the receiver answered `410 Gone`: nothing is sent any more.
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    /// Until then the secret before the last rotation signs too.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_expires_at: Option<Timestamp>,
}

/// A new endpoint, with its secret: the only time it is shown.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedWebhook {
    id: String,
    url: String,
    events: Vec<WebhookEvent>,
    /// `whsec_` + base64 of 32 random bytes; verify signatures with it (Standard Webhooks).
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    secret: String,
    created_at: Timestamp,
}

/// The secret after a rotation; the one before it signs too until `previousSecretExpiresAt`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    id: String,
    secret: String,
    previous_secret_expires_at: Timestamp,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    items: Vec<WebhookView>,
}

/// Where a delivery stands.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStateView {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    at: Timestamp,
    /// The receiver's answer; absent when none came.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    duration_ms: u64,
}

/// One event sent (or being sent) to the endpoint.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    /// The `webhook-id` header, the same on every attempt.
    #[schema(example = "msg_5b0c0f3e9a1d4c2b8e7f6a5d4c3b2a19")]
    id: String,
    event_type: WebhookEvent,
    action_id: String,
    state: DeliveryStateView,
    /// Attempts made in all.
    attempt_count: u32,
    /// The latest attempts, oldest first (at most 20).
    attempts: Vec<AttemptView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<Timestamp>,
    /// Why it failed before its retries ran out: the endpoint had more than 1,000
    /// deliveries pending, and this was the oldest. Redeliver it once the endpoint answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    created_at: Timestamp,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    items: Vec<DeliveryView>,
}

/// Register an endpoint for the account's action events.
///
/// Deliveries follow the Standard Webhooks specification: headers `webhook-id`,
/// `webhook-timestamp`, `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` keyed with the secret's base64-decoded part after `whsec_`),
/// body `{type, timestamp, data}` with the action's view in `data`. Any 2xx is success;
/// others are retried (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h,
/// with jitter); `410 Gone` disables the endpoint. At most 20 endpoints per account.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks",
    request_body = NewWebhook,
    responses(
        (status = 201, body = CreatedWebhook),
        (status = 400, description = "`invalid_webhook_url`, `webhook_url_not_allowed` (not https, or a private, loopback, link-local or metadata address), `invalid_field`, `missing_field`, `unknown_field`, `invalid_body`, `malformed_json`", body = ErrorBody),
        (status = 409, description = "The account has 20 endpoints (`too_many_webhooks`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Not JSON (`unsupported_media_type`)", body = ErrorBody),
    ))]
pub async fn create_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonObject(body): JsonObject<Value>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let (url, events) = read_new_webhook(&body, state.config.webhook_allow_private_networks)?;
    let now = infra::clock::now();
    let endpoint = Endpoint {
        id: infra::webhooks::new_endpoint_id(),
        url,
        events,
        secret: new_secret(),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: now,
        disabled_at: None,
        disabled_reason: None,
    };
    if !state.webhooks.create(&caller.account, &endpoint).await? {
        return Err(ApiError::conflict(
            ErrorCode::TooManyWebhooks,
            format!("an account has at most {MAX_ENDPOINTS} webhook endpoints; delete one first"),
        )
        .with_details(json!({ "limit": MAX_ENDPOINTS })));
    }
    tracing::info!(account = %caller.account, endpoint = %endpoint.id, "webhook endpoint registered");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            id: endpoint.id,
            url: endpoint.url,
            events: endpoint.events,
            secret: endpoint.secret,
            created_at: endpoint.created_at,
        }),
    ))
}

/// List the account's endpoints (secrets are never shown again).
#[utoipa::path(get, path = "/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<WebhookList>, ApiError> {
    let items = state
        .webhooks
        .list(&caller.account)
        .await?
        .into_iter()
        .map(view)
        .collect();
    Ok(Json(WebhookList { items }))
}

/// Read one endpoint.
#[utoipa::path(get, path = "/webhooks/{webhookId}", tag = "webhooks",
    params(("webhookId" = String, Path)),
    responses(
        (status = 200, body = WebhookView),
        (status = 404, description = "No such endpoint in this account (`webhook_not_found`)", body = ErrorBody),
    ))]
pub async fn get_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(view(owned(&state, &caller, &id).await?)))
}

/// Delete an endpoint and its deliveries; nothing more is sent to it.
#[utoipa::path(delete, path = "/webhooks/{webhookId}", tag = "webhooks",
    params(("webhookId" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such endpoint in this account (`webhook_not_found`)", body = ErrorBody),
    ))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !plausible_id(&id) || !state.webhooks.delete(&caller.account, &id).await? {
        return Err(webhook_not_found());
    }
    tracing::info!(account = %caller.account, endpoint = %id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the endpoint's secret. The new one is shown once; the old one goes on signing
/// beside it (two `v1,` signatures) for 24 hours, so receivers can switch without a gap.
/// Refused while a rotation's 24 hours are running: a second one would stop the original
/// secret signing at once, before receivers could switch.
#[utoipa::path(post, path = "/webhooks/{webhookId}/rotate-secret", tag = "webhooks",
    params(("webhookId" = String, Path)),
    responses(
        (status = 200, body = RotatedSecret),
        (status = 409, description = "The previous rotation's overlap is still running (`rotation_in_progress`); `error.details.previousSecretExpiresAt` says until when", body = ErrorBody),
        (status = 404, description = "No such endpoint in this account (`webhook_not_found`)", body = ErrorBody),
    ))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RotatedSecret>, ApiError> {
    if !plausible_id(&id) {
        return Err(webhook_not_found());
    }
    let secret = new_secret();
    let now = infra::clock::now();
    let expires = Timestamp::from_millis(now.millis() + ROTATION_OVERLAP_MS)
        .ok_or_else(|| ApiError::internal("the rotation overlap is out of range"))?;
    // Decided on the endpoint as the update reads it, so racing rotations cannot both pass.
    let overlapping = std::sync::Mutex::new(None);
    let rotated = state
        .webhooks
        .update(&caller.account, &id, |endpoint| {
            let running = endpoint
                .previous_secret_expires_at
                .filter(|end| endpoint.previous_secret.is_some() && now < *end);
            if let Ok(mut overlapping) = overlapping.lock() {
                *overlapping = running;
            }
            if running.is_some() {
                return;
            }
            endpoint.previous_secret =
                Some(std::mem::replace(&mut endpoint.secret, secret.clone()));
            endpoint.previous_secret_expires_at = Some(expires);
        })
        .await?
        .ok_or_else(webhook_not_found)?;
    if let Some(end) = overlapping.into_inner().ok().flatten() {
        return Err(ApiError::conflict(
            ErrorCode::RotationInProgress,
            "the previous secret rotation's overlap is still running; rotate again once it ends",
        )
        .with_details(serde_json::json!({ "previousSecretExpiresAt": end })));
    }
    tracing::info!(account = %caller.account, endpoint = %id, "webhook secret rotated");
    Ok(Json(RotatedSecret {
        id: rotated.id,
        secret: rotated.secret,
        previous_secret_expires_at: expires,
    }))
}

/// The endpoint's latest deliveries, newest first: the last 100, of the last 7 days.
#[utoipa::path(get, path = "/webhooks/{webhookId}/deliveries", tag = "webhooks",
    params(("webhookId" = String, Path)),
    responses(
        (status = 200, body = DeliveryList),
        (status = 404, description = "No such endpoint in this account (`webhook_not_found`)", body = ErrorBody),
    ))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryList>, ApiError> {
    let endpoint = owned(&state, &caller, &id).await?;
    let items = state
        .webhooks
        .deliveries(&caller.account, &endpoint.id, KEEP_DELIVERIES)
        .await?
        .into_iter()
        .map(delivery_view)
        .collect();
    Ok(Json(DeliveryList { items }))
}

/// Send a delivery that succeeded or failed again, with the same `webhook-id` (receivers
/// deduplicate on it), its retry schedule from the start.
#[utoipa::path(post, path = "/webhooks/{webhookId}/deliveries/{deliveryId}/redeliver", tag = "webhooks",
    params(("webhookId" = String, Path), ("deliveryId" = String, Path)),
    responses(
        (status = 202, description = "Scheduled now", body = DeliveryView),
        (status = 404, description = "No such endpoint or delivery in this account (`webhook_not_found`, `delivery_not_found`)", body = ErrorBody),
        (status = 409, description = "The delivery is still being attempted (`delivery_pending`)", body = ErrorBody),
    ))]
pub async fn redeliver(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryView>), ApiError> {
    let endpoint = owned(&state, &caller, &id).await?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::DeliveryNotFound,
            "this endpoint has no delivery with that id",
        )
    };
    if !plausible_id(&delivery_id) {
        return Err(not_found());
    }
    let now = infra::clock::now();
    match state
        .webhooks
        .redeliver(&caller.account, &endpoint.id, &delivery_id, now)
        .await?
    {
        (Redelivery::Scheduled, Some(delivery)) => {
            Ok((StatusCode::ACCEPTED, Json(delivery_view(delivery))))
        }
        (Redelivery::StillPending, _) => Err(ApiError::conflict(
            ErrorCode::DeliveryPending,
            "the delivery is still being attempted; redeliver it once it has succeeded or failed",
        )),
        _ => Err(not_found()),
    }
}

fn read_new_webhook(
    body: &Value,
    allow_private: bool,
) -> Result<(String, Vec<WebhookEvent>), ApiError> {
    const FIELDS: [&str; 2] = ["url", "events"];
    let object = body.as_object().ok_or_else(|| {
        ApiError::bad_request(ErrorCode::InvalidBody, "the body must be a JSON object")
    })?;
    if let Some(unknown) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(ApiError::unknown_field(unknown, &FIELDS));
    }
    let missing = |field: &str| {
        ApiError::bad_request(ErrorCode::MissingField, format!("{field} is required"))
            .with_details(json!({ "field": field }))
    };
    let url = match object.get("url") {
        None => return Err(missing("url")),
        Some(Value::String(url)) => url,
        Some(_) => return Err(ApiError::invalid_field("url", "url must be a string")),
    };
    let url = webhook::check_url(url, allow_private).map_err(url_refusal)?;
    let raw_events = match object.get("events") {
        None => return Err(missing("events")),
        Some(Value::Array(events)) if !events.is_empty() => events,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "events",
                "events must be a non-empty list of event types",
            ))
        }
    };
    let known: Vec<&str> = WebhookEvent::ALL.iter().map(|e| e.as_str()).collect();
    let mut events = Vec::new();
    for raw in raw_events {
        let event = raw.as_str().and_then(WebhookEvent::parse).ok_or_else(|| {
            ApiError::invalid_field("events", "an unknown event type")
                .with_details(json!({ "field": "events", "allowed": known }))
        })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    events.sort_unstable();
    Ok((url.to_string(), events))
}

fn url_refusal(error: UrlError) -> ApiError {
    let code = match error {
        UrlError::NotHttps | UrlError::ForbiddenAddress(_) | UrlError::LocalHost => {
            ErrorCode::WebhookUrlNotAllowed
        }
        UrlError::TooLong | UrlError::Malformed | UrlError::Credentials | UrlError::NoHost => {
            ErrorCode::InvalidWebhookUrl
        }
    };
    let mut details = json!({ "field": "url" });
    if let UrlError::ForbiddenAddress(why) = error {
        details["address"] = json!(why.as_str());
    }
    ApiError::bad_request(code, error.to_string()).with_details(details)
}

fn new_secret() -> String {
    let bytes: [u8; webhook::SECRET_BYTES] = rand::random();
    webhook::secret_from_bytes(&bytes)
}

/// Ids are `ep_` or `msg_` and a few dozen characters: anything longer is no id of ours
/// and is not looked up.
fn plausible_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
}

fn webhook_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::WebhookNotFound,
        "this account has no webhook endpoint with that id",
    )
}

/// The caller's endpoint `id`; another account's is not found.
async fn owned(state: &AppState, caller: &Caller, id: &str) -> Result<Endpoint, ApiError> {
    if !plausible_id(id) {
        return Err(webhook_not_found());
    }
    state
        .webhooks
        .get(&caller.account, id)
        .await?
        .ok_or_else(webhook_not_found)
}

fn view(endpoint: Endpoint) -> WebhookView {
    WebhookView {
        id: endpoint.id,
        url: endpoint.url,
        events: endpoint.events,
        created_at: endpoint.created_at,
        disabled_at: endpoint.disabled_at,
        disabled_reason: endpoint.disabled_reason,
        previous_secret_expires_at: endpoint.previous_secret_expires_at,
    }
}

fn delivery_view(delivery: Delivery) -> DeliveryView {
    DeliveryView {
        id: delivery.id,
        event_type: delivery.event_type,
        action_id: delivery.action_id.to_string(),
        state: match delivery.state {
            DeliveryState::Pending => DeliveryStateView::Pending,
            DeliveryState::Succeeded => DeliveryStateView::Succeeded,
            DeliveryState::Failed => DeliveryStateView::Failed,
        },
        attempt_count: delivery.attempt_count,
        attempts: delivery
            .attempts
            .into_iter()
            .map(|attempt| AttemptView {
                at: attempt.at,
                status_code: attempt.status_code,
                error: attempt.error,
                duration_ms: attempt.duration_ms,
            })
            .collect(),
        next_attempt_at: delivery.next_attempt_at,
        failure_reason: delivery.failure_reason,
        created_at: delivery.created_at,
    }
}
