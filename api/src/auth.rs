//! Who is calling. Every `/bulk-actions` endpoint needs `Authorization: Bearer <api key>`;
//! the key decides the account, and the request is charged to that account's budget before
//! anything else is read.
//!
//! A key is `bka_<keyId>.<secret>`: the id (a ULID) finds the stored key in one lookup, and
//! the secret (256 random bits) is compared by its SHA-256, the only form it is stored in.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::AccountId;
use rand::RngCore;
use sha2::{Digest, Sha256};
use ulid::Ulid;

use crate::error::ApiError;
use crate::rate_limit::{self, QuotaSlot};
use crate::AppState;

const TOKEN_PREFIX: &str = "bka_";
const SECRET_BYTES: usize = 32;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account: AccountId,
    pub key_id: String,
}

/// A freshly made key: `token` is shown once, `digest` is what is stored.
pub struct NewKey {
    pub key_id: String,
    pub token: String,
    pub digest: String,
}

pub fn mint_key() -> NewKey {
    let key_id = Ulid::new().to_string();
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewKey {
        token: format!("{TOKEN_PREFIX}{key_id}.{secret}"),
        digest: digest(&secret),
        key_id,
    }
}

fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `(key id, secret)` of a well-formed token.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (key_id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    let well_formed = Ulid::from_string(key_id).is_ok()
        && secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some((key_id, secret))
}

/// The bearer token of a request, if it sent exactly one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn unauthorized(message: &str) -> ApiError {
    ApiError::unauthorized(message)
}

/// Authenticates the request and charges it to its account's request budget.
pub async fn admit(
    state: &AppState,
    slot: &QuotaSlot,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let token =
        bearer(headers).ok_or_else(|| unauthorized("send `Authorization: Bearer <api key>`"))?;
    let invalid = || unauthorized("the api key is not valid (unknown, revoked or malformed)");
    let (key_id, secret) = parse_token(token).ok_or_else(invalid)?;
    let stored = state.store.api_key(key_id).await?.ok_or_else(invalid)?;
    // Both sides are digests: how long the comparison takes says nothing about the secret.
    if stored.digest != digest(secret) {
        return Err(invalid());
    }
    rate_limit::admit(state, slot, &stored.account).await?;
    Ok(Caller {
        account: stored.account,
        key_id: stored.key_id,
    })
}

/// Middleware of every `/bulk-actions` route: authenticates and charges the request before
/// its handler runs, so nothing of an unauthenticated request's body is ever read. Handlers
/// take the `Caller` from the request's extensions.
pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let slot = request
        .extensions()
        .get::<QuotaSlot>()
        .cloned()
        .unwrap_or_default();
    let caller = admit(&state, &slot, request.headers()).await?;
    tracing::Span::current().record("account", tracing::field::display(&caller.account));
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_parse_and_verify() {
        let key = mint_key();
        let (key_id, secret) = parse_token(&key.token).expect("well formed");
        assert_eq!(key_id, key.key_id);
        assert_eq!(digest(secret), key.digest);
        assert_ne!(mint_key().token, key.token);
        for bad in [
            "",
            "bka_",
            "bka_nope.secret",
            &key.token.replace("bka_", "bkx_"),
            &format!("{}x", key.token),
            &key.token[..key.token.len() - 1],
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bearer_is_read_once_and_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.append(header::AUTHORIZATION, "Bearer def".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
