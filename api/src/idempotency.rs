//! `Idempotency-Key`: a client that resubmits after a timeout or a crash gets the action it
//! created the first time, not a second one.
//!
//! The key is scoped to the account. Its first use reserves `idem:<digest>` in the account's
//! partition (24 h by default) for a freshly generated action id plus a fingerprint of the
//! body (a reservation made before issue 14, outside the partitions, is read first); a later
//! use with the same body gets that action id back. If the first submission died before
//! committing, the retry takes over the reserved id and commits it itself; `commit_action`
//! creates an action at most once, so two racing submissions still make one action.

use axum::http::{HeaderMap, StatusCode};
use domain::{AccountId, ActionId};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorCode};
use crate::AppState;

pub const HEADER: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// 1 to 255 visible ASCII characters (what Stripe, PayPal and the IETF draft accept).
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let invalid = |why: &str| {
            ApiError::bad_request(
                ErrorCode::InvalidIdempotencyKey,
                format!("Idempotency-Key {why}"),
            )
        };
        if values.next().is_some() {
            return Err(invalid("must be sent once"));
        }
        let key = value
            .to_str()
            .map_err(|_| invalid("must be visible ASCII"))?;
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(invalid("must be 1 to 255 characters long"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("must be visible ASCII without spaces"));
        }
        Ok(Some(Self(key.to_owned())))
    }
}

/// What the key says about this submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Proceed and create the action under this id.
    Proceed(ActionId),
    /// The action exists: answer with it.
    Replay(ActionId),
}

pub async fn claim(
    state: &AppState,
    account: &AccountId,
    key: &IdempotencyKey,
    body_fingerprint: &str,
    candidate: ActionId,
) -> Result<Claim, ApiError> {
    let keys = redis_keys(state, account, key);
    // A reservation an older build made stands for its action once committed; one it never
    // committed is not taken over (its id may not be minted in the account's partition).
    if let Some(legacy) = state.store.holder(&keys.legacy).await? {
        if let Held::Committed(id) = held(state, &legacy, body_fingerprint, &keys.legacy).await? {
            return Ok(Claim::Replay(id));
        }
    }
    let ours = format!("{candidate} {body_fingerprint}");
    let holder = state
        .store
        .reserve(&keys.current, &ours, state.config.idempotency_ttl_secs)
        .await?;
    let Some(holder) = holder else {
        return Ok(Claim::Proceed(candidate));
    };
    Ok(
        match held(state, &holder, body_fingerprint, &keys.current).await? {
            Held::Committed(id) => Claim::Replay(id),
            Held::Uncommitted(id) => Claim::Proceed(id),
            Held::Unreadable => Claim::Proceed(candidate),
        },
    )
}

/// What a reservation holds.
enum Held {
    Committed(ActionId),
    /// Reserved by a submission that has not committed (yet, or ever): the retry takes over.
    Uncommitted(ActionId),
    /// Not ours to interpret; never let it block the client.
    Unreadable,
}

/// Reads a reservation's value; a different body is the client's error.
async fn held(
    state: &AppState,
    holder: &str,
    body_fingerprint: &str,
    redis_key: &str,
) -> Result<Held, ApiError> {
    let (held_id, held_fingerprint) = holder.split_once(' ').unwrap_or((holder, ""));
    let Some(held_id) = ActionId::parse(held_id) else {
        tracing::error!(%redis_key, "unreadable idempotency record; proceeding without it");
        return Ok(Held::Unreadable);
    };
    if held_fingerprint != body_fingerprint {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request body",
        )
        .with_details(json!({ "actionId": held_id.to_string() })));
    }
    if state.store.meta(held_id).await?.is_some() {
        Ok(Held::Committed(held_id))
    } else {
        Ok(Held::Uncommitted(held_id))
    }
}

/// The action a key already stands for, if it was committed with this same body; reserves
/// nothing. For answering a resubmission that would otherwise be refused.
pub async fn committed(
    state: &AppState,
    account: &AccountId,
    key: &IdempotencyKey,
    body_fingerprint: &str,
) -> Result<Option<ActionId>, ApiError> {
    let keys = redis_keys(state, account, key);
    for redis_key in [&keys.legacy, &keys.current] {
        let Some(holder) = state.store.holder(redis_key).await? else {
            continue;
        };
        let Some((id, fingerprint)) = holder.split_once(' ') else {
            continue;
        };
        let Some(id) = ActionId::parse(id).filter(|_| fingerprint == body_fingerprint) else {
            continue;
        };
        if state.store.meta(id).await?.is_some() {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Where a key's reservation is kept, and where builds before issue 14 kept it: a
/// reservation made by one of those within the last `IDEMPOTENCY_TTL_SECS` still holds.
struct RedisKeys {
    current: String,
    legacy: String,
}

fn redis_keys(state: &AppState, account: &AccountId, key: &IdempotencyKey) -> RedisKeys {
    let mut hasher = Sha256::new();
    hasher.update(account.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(key.0.as_bytes());
    let digest = hex(&hasher.finalize());
    let keys = state.store.keys();
    RedisKeys {
        current: keys.idempotency(account, &digest),
        legacy: keys.legacy_idempotency(&digest),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HEADER, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert_eq!(IdempotencyKey::from_headers(&headers(&[])).unwrap(), None);
        assert!(IdempotencyKey::from_headers(&headers(&[b"order-42:retry"]))
            .unwrap()
            .is_some());
        let long = vec![b'k'; MAX_KEY_LEN + 1];
        for bad in [&b"has space"[..], b"", &long, "é".as_bytes()] {
            assert!(
                IdempotencyKey::from_headers(&headers(&[bad])).is_err(),
                "{bad:?}"
            );
        }
        assert!(IdempotencyKey::from_headers(&headers(&[b"a", b"b"])).is_err());
    }
}
