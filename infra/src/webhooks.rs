//! Webhook endpoints and their deliveries, in Redis, in the account's partition.
//!
//! An account's endpoints are one hash (`webhooks:<account>`, at most `MAX_ENDPOINTS`); an
//! endpoint's deliveries one hash keyed by `webhook-id` (`webhook-deliveries:<endpoint>`)
//! with a zset of when each was made (`webhook-log:<endpoint>`), both bounded; the attempts
//! waiting to be made are one zset per partition (`webhook-due`), scored by when each is
//! due, or, while a deliverer holds it, by when its lease ends. Every write is a Lua script
//! (`lua/webhook_*.lua`) on the keys of one partition.

use std::collections::HashMap;

use domain::webhook::{WebhookEvent, SECRET_PREFIX};
use domain::{AccountId, ActionId, Timestamp};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use crate::event_store::StoreError;
use crate::keys::Keys;
use crate::redis_conn::Shared;
use crate::scripts::with_library;

/// Endpoints one account may register.
pub const MAX_ENDPOINTS: usize = 20;
/// Finished deliveries kept per endpoint, newest first, and for at most
/// `KEEP_DELIVERIES_MS`; pending ones are never trimmed.
pub const KEEP_DELIVERIES: usize = 100;
pub const KEEP_DELIVERIES_MS: i64 = 7 * 24 * 3600 * 1000;
/// Pending deliveries an endpoint may have; past it the oldest is failed (not deleted).
pub const MAX_PENDING_DELIVERIES: usize = 1000;
/// Why a delivery was failed that way.
pub const TOO_MANY_PENDING: &str =
    "more than 1000 deliveries were pending for this endpoint; the oldest was failed (redeliver it once the endpoint answers)";
/// Attempts kept in a delivery's history (its count goes on).
pub const KEEP_ATTEMPTS: usize = 20;
/// Due attempts a claim looks at for one whose account is under its in-flight bound.
pub const CLAIM_SCAN: usize = 32;
/// How far a claim puts back a due attempt it passed over, its account being at its bound.
pub const CLAIM_DEFER_MS: u64 = 1000;
/// How long the secret before a rotation goes on signing beside the new one (ms).
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;

/// An endpoint as stored. Its secrets are kept whole: they sign every delivery (and are
/// never shown by `Debug`, which a log line or a panic may print).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    pub secret: String,
    /// The secret before the last rotation, signing too until `previous_secret_expires_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// Set when the receiver answered `410 Gone`: nothing is sent to it any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "previous_secret_expires_at",
                &self.previous_secret_expires_at,
            )
            .field("created_at", &self.created_at)
            .field("disabled_at", &self.disabled_at)
            .field("disabled_reason", &self.disabled_reason)
            .finish()
    }
}

impl Endpoint {
    /// The keys that sign a delivery made at `now`: the secret, and the one before a
    /// rotation while its overlap lasts.
    pub fn signing_keys(&self, now: Timestamp) -> Vec<Vec<u8>> {
        let previous = self
            .previous_secret
            .as_deref()
            .filter(|_| self.previous_secret_expires_at.is_some_and(|end| now < end));
        std::iter::once(self.secret.as_str())
            .chain(previous)
            .filter_map(domain::webhook::secret_key)
            .collect()
    }

    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.disabled_at.is_none() && self.events.contains(&event)
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// An attempt is due or under way.
    Pending,
    /// A receiver answered 2xx.
    Succeeded,
    /// Every attempt of the schedule failed, or the endpoint is gone or disabled.
    Failed,
}

/// One attempt at a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub at: Timestamp,
    /// The receiver's status code; none when no answer came (refused address, timeout,
    /// connection error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One event for one endpoint, as stored: its body is fixed when it is made, so every
/// attempt sends the same bytes under the same `webhook-id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The `webhook-id`.
    pub id: String,
    pub endpoint_id: String,
    pub account_id: AccountId,
    pub action_id: ActionId,
    pub seq: u64,
    pub event_type: WebhookEvent,
    pub body: String,
    pub created_at: Timestamp,
    pub state: DeliveryState,
    /// Attempts made, in all.
    pub attempt_count: u32,
    /// Failed attempts since it was (re)scheduled: its place in the retry schedule.
    pub failed_in_round: u32,
    /// The latest `KEEP_ATTEMPTS` attempts, oldest first. (Read leniently: a delivery
    /// re-encoded by a script's cjson has an empty list as `{}`.)
    #[serde(deserialize_with = "attempts_or_empty_object")]
    pub attempts: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    /// Why it failed without its retry schedule running out (`TOO_MANY_PENDING`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

fn attempts_or_empty_object<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Attempt>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Attempts {
        List(Vec<Attempt>),
        Empty(serde_json::Map<String, serde_json::Value>),
    }
    match Attempts::deserialize(deserializer)? {
        Attempts::List(attempts) => Ok(attempts),
        Attempts::Empty(map) if map.is_empty() => Ok(Vec::new()),
        Attempts::Empty(_) => Err(serde::de::Error::custom("attempts: a list")),
    }
}

impl Delivery {
    /// Its member of the partition's due set.
    pub fn due_member(&self) -> String {
        due_member(&self.account_id, &self.endpoint_id, &self.id)
    }

    pub fn record(&mut self, attempt: Attempt) {
        self.attempt_count += 1;
        self.attempts.push(attempt);
        let excess = self.attempts.len().saturating_sub(KEEP_ATTEMPTS);
        self.attempts.drain(..excess);
    }
}

fn due_member(account: &AccountId, endpoint: &str, delivery: &str) -> String {
    format!("{account} {endpoint} {delivery}")
}

/// A due attempt a deliverer holds under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub partition: u32,
    pub member: String,
    pub account: AccountId,
    pub endpoint_id: String,
    pub delivery_id: String,
    /// When the lease ends (ms, Redis' clock); the settlement shows it.
    pub lease_end: i64,
}

/// What became of an attempt, to record.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub delivery: Delivery,
    /// The next attempt's delay (ms); `None` when the delivery is over.
    pub retry_in: Option<u64>,
    /// Disables the endpoint (a `410 Gone`): when and why.
    pub disable: Option<(Timestamp, String)>,
}

/// Whether a settlement was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Recorded,
    /// The lease ran out and another deliverer has the attempt: nothing recorded.
    LeaseLost,
    /// The delivery (or its endpoint) is gone.
    Gone,
}

/// Whether a redelivery was scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    Scheduled,
    /// The delivery is still pending: it is being retried already.
    StillPending,
    Gone,
}

struct Scripts {
    create: Script,
    replace: Script,
    delete: Script,
    enqueue: Script,
    claim: Script,
    settle: Script,
    redeliver: Script,
}

/// The webhook store: endpoints (the api) and deliveries (the deliverers, and the api's
/// listing and redelivery).
#[derive(Clone)]
pub struct Webhooks {
    conn: Shared,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
}

impl Webhooks {
    pub fn new(conn: Shared, keys: Keys) -> Self {
        let scripts = Scripts {
            create: with_library(include_str!("lua/webhook_create.lua")),
            replace: with_library(include_str!("lua/webhook_replace.lua")),
            delete: with_library(include_str!("lua/webhook_delete.lua")),
            enqueue: with_library(include_str!("lua/webhook_enqueue.lua")),
            claim: with_library(include_str!("lua/webhook_claim.lua")),
            settle: with_library(include_str!("lua/webhook_settle.lua")),
            redeliver: with_library(include_str!("lua/webhook_redeliver.lua")),
        };
        Self {
            conn,
            keys,
            scripts: std::sync::Arc::new(scripts),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn connection(&self) -> Shared {
        self.conn.clone()
    }

    /// Registers `endpoint`; false when the account has `MAX_ENDPOINTS` already.
    pub async fn create(
        &self,
        account: &AccountId,
        endpoint: &Endpoint,
    ) -> Result<bool, StoreError> {
        let created: i64 = self
            .scripts
            .create
            .key(self.keys.webhooks(account))
            .arg(&endpoint.id)
            .arg(serde_json::to_string(endpoint)?)
            .arg(MAX_ENDPOINTS)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(created == 1)
    }

    /// The account's endpoints, oldest first.
    pub async fn list(&self, account: &AccountId) -> Result<Vec<Endpoint>, StoreError> {
        let raw: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(self.keys.webhooks(account))
            .await?;
        let mut endpoints = raw
            .values()
            .map(|json| serde_json::from_str::<Endpoint>(json))
            .collect::<Result<Vec<_>, _>>()?;
        endpoints.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(endpoints)
    }

    pub async fn get(&self, account: &AccountId, id: &str) -> Result<Option<Endpoint>, StoreError> {
        Ok(self
            .get_raw(account, id)
            .await?
            .map(|(endpoint, _)| endpoint))
    }

    async fn get_raw(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<Option<(Endpoint, String)>, StoreError> {
        let raw: Option<String> = self
            .conn
            .clone()
            .hget(self.keys.webhooks(account), id)
            .await?;
        raw.map(|json| Ok((serde_json::from_str(&json)?, json)))
            .transpose()
    }

    /// Applies `change` to the endpoint as stored, again if it changed meanwhile; `None`
    /// when there is no such endpoint.
    pub async fn update(
        &self,
        account: &AccountId,
        id: &str,
        change: impl Fn(&mut Endpoint),
    ) -> Result<Option<Endpoint>, StoreError> {
        // Only a racing rotation or disabling changes an endpoint; a few rounds settle it.
        for _ in 0..16 {
            let Some((mut endpoint, read)) = self.get_raw(account, id).await? else {
                return Ok(None);
            };
            change(&mut endpoint);
            let replaced: i64 = self
                .scripts
                .replace
                .key(self.keys.webhooks(account))
                .arg(id)
                .arg(&read)
                .arg(serde_json::to_string(&endpoint)?)
                .invoke_async(&mut self.conn.clone())
                .await?;
            match replaced {
                1 => return Ok(Some(endpoint)),
                -1 => return Ok(None),
                _ => {}
            }
        }
        Err(StoreError::Corrupt(format!(
            "webhook endpoint {id} changed under every update"
        )))
    }

    /// Deletes an endpoint and its deliveries; false when there is none.
    pub async fn delete(&self, account: &AccountId, id: &str) -> Result<bool, StoreError> {
        let deleted: i64 = self
            .scripts
            .delete
            .key(self.keys.webhooks(account))
            .key(self.keys.webhook_deliveries(account, id))
            .key(self.keys.webhook_log(account, id))
            .key(self.keys.webhook_pending(account, id))
            .arg(id)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(deleted == 1)
    }

    /// Stores a delivery and makes its first attempt due now, unless it is stored already
    /// or its endpoint is gone (then false). An endpoint with `MAX_PENDING_DELIVERIES` pending has its oldest
    /// pending one failed (`TOO_MANY_PENDING`), logged here.
    pub async fn enqueue(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        let account = &delivery.account_id;
        let endpoint = &delivery.endpoint_id;
        let partition = self.keys.account_partition(account);
        let (stored, failed): (i64, String) = self
            .scripts
            .enqueue
            .key(self.keys.webhook_deliveries(account, endpoint))
            .key(self.keys.webhook_log(account, endpoint))
            .key(self.keys.webhook_due(partition))
            .key(self.keys.webhook_pending(account, endpoint))
            .key(self.keys.webhooks(account))
            .arg(&delivery.id)
            .arg(serde_json::to_string(delivery)?)
            .arg(format!("{account} {endpoint} "))
            .arg(KEEP_DELIVERIES)
            .arg(KEEP_DELIVERIES_MS)
            .arg(MAX_PENDING_DELIVERIES)
            .arg(TOO_MANY_PENDING)
            .arg(endpoint)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if !failed.is_empty() {
            tracing::warn!(%account, endpoint, delivery = %failed, "an endpoint had too many pending webhook deliveries; the oldest was failed");
        }
        Ok(stored == 1)
    }

    /// Takes the partition's next due attempt under a lease of `lease_ms`, passing over
    /// (and deferring by a moment) those of accounts that hold `max_in_flight` leases.
    pub async fn claim(
        &self,
        partition: u32,
        lease_ms: u64,
        max_in_flight: usize,
    ) -> Result<Option<Claim>, StoreError> {
        let claimed: Option<(String, i64)> = self
            .scripts
            .claim
            .key(self.keys.webhook_due(partition))
            .key(self.keys.webhook_leases(partition))
            .arg(lease_ms)
            .arg(max_in_flight.max(1))
            .arg(CLAIM_SCAN)
            .arg(CLAIM_DEFER_MS)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let Some((member, lease_end)) = claimed else {
            return Ok(None);
        };
        let mut parts = member.splitn(3, ' ');
        let (Some(account), Some(endpoint), Some(delivery)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(StoreError::Corrupt(format!("webhook due member {member}")));
        };
        let account = AccountId::parse(account)
            .map_err(|_| StoreError::Corrupt(format!("webhook due member {member}")))?;
        Ok(Some(Claim {
            partition,
            endpoint_id: endpoint.to_owned(),
            delivery_id: delivery.to_owned(),
            account,
            member,
            lease_end,
        }))
    }

    /// Drops a due attempt that has nothing left to send (its delivery or endpoint is gone).
    pub async fn drop_due(&self, claim: &Claim) -> Result<(), StoreError> {
        redis::pipe()
            .zrem(self.keys.webhook_due(claim.partition), &claim.member)
            .ignore()
            .zrem(self.keys.webhook_leases(claim.partition), &claim.member)
            .ignore()
            .zrem(
                self.keys
                    .webhook_pending(&claim.account, &claim.endpoint_id),
                &claim.delivery_id,
            )
            .ignore()
            .exec_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    pub async fn delivery(
        &self,
        account: &AccountId,
        endpoint: &str,
        id: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        Ok(self
            .delivery_raw(account, endpoint, id)
            .await?
            .map(|(delivery, _)| delivery))
    }

    async fn delivery_raw(
        &self,
        account: &AccountId,
        endpoint: &str,
        id: &str,
    ) -> Result<Option<(Delivery, String)>, StoreError> {
        let raw: Option<String> = self
            .conn
            .clone()
            .hget(self.keys.webhook_deliveries(account, endpoint), id)
            .await?;
        raw.map(|json| Ok((serde_json::from_str(&json)?, json)))
            .transpose()
    }

    /// Records an attempt made under `claim`.
    pub async fn settle(
        &self,
        claim: &Claim,
        settlement: &Settlement,
    ) -> Result<Settled, StoreError> {
        let (disabled_at, reason) = settlement
            .disable
            .as_ref()
            .map(|(at, reason)| (at.to_string(), reason.clone()))
            .unwrap_or_default();
        let settled: i64 = self
            .scripts
            .settle
            .key(self.keys.webhook_due(claim.partition))
            .key(
                self.keys
                    .webhook_deliveries(&claim.account, &claim.endpoint_id),
            )
            .key(self.keys.webhooks(&claim.account))
            .key(self.keys.webhook_leases(claim.partition))
            .key(
                self.keys
                    .webhook_pending(&claim.account, &claim.endpoint_id),
            )
            .arg(&claim.member)
            .arg(&claim.delivery_id)
            .arg(claim.lease_end)
            .arg(serde_json::to_string(&settlement.delivery)?)
            .arg(
                settlement
                    .retry_in
                    .map(|ms| ms.to_string())
                    .unwrap_or_default(),
            )
            .arg(&claim.endpoint_id)
            .arg(disabled_at)
            .arg(reason)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match settled {
            1 => Settled::Recorded,
            0 => Settled::LeaseLost,
            _ => Settled::Gone,
        })
    }

    /// An endpoint's deliveries, newest first, at most `limit`.
    pub async fn deliveries(
        &self,
        account: &AccountId,
        endpoint: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut conn = self.conn.clone();
        let stop = isize::try_from(limit.max(1)).unwrap_or(isize::MAX) - 1;
        let ids: Vec<String> = conn
            .zrevrange(self.keys.webhook_log(account, endpoint), 0, stop)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.webhook_deliveries(account, endpoint))
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
        raw.into_iter()
            .flatten()
            .map(|json| serde_json::from_str(&json).map_err(StoreError::from))
            .collect()
    }

    /// Sends a finished delivery again (same `webhook-id`), its schedule from the start.
    pub async fn redeliver(
        &self,
        account: &AccountId,
        endpoint: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<(Redelivery, Option<Delivery>), StoreError> {
        for _ in 0..16 {
            let Some((mut delivery, read)) = self.delivery_raw(account, endpoint, id).await? else {
                return Ok((Redelivery::Gone, None));
            };
            if delivery.state == DeliveryState::Pending {
                return Ok((Redelivery::StillPending, Some(delivery)));
            }
            delivery.state = DeliveryState::Pending;
            delivery.failed_in_round = 0;
            delivery.failure_reason = None;
            delivery.next_attempt_at = Some(now);
            let partition = self.keys.account_partition(account);
            let scheduled: i64 = self
                .scripts
                .redeliver
                .key(self.keys.webhook_deliveries(account, endpoint))
                .key(self.keys.webhook_due(partition))
                .key(self.keys.webhook_pending(account, endpoint))
                .arg(id)
                .arg(&read)
                .arg(serde_json::to_string(&delivery)?)
                .arg(delivery.due_member())
                .invoke_async(&mut self.conn.clone())
                .await?;
            match scheduled {
                1 => return Ok((Redelivery::Scheduled, Some(delivery))),
                -1 => return Ok((Redelivery::Gone, None)),
                _ => {}
            }
        }
        Err(StoreError::Corrupt(format!(
            "webhook delivery {id} changed under every redelivery"
        )))
    }
}

/// A fresh endpoint id.
pub fn new_endpoint_id() -> String {
    format!("ep_{}", ulid::Ulid::new())
}

/// Whether `secret` has the form this platform mints (for a stored endpoint's sanity).
pub fn is_secret(secret: &str) -> bool {
    secret.starts_with(SECRET_PREFIX) && domain::webhook::secret_key(secret).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(now: Timestamp) -> Endpoint {
        Endpoint {
            id: "ep_1".into(),
            url: "https://example.com/hook".into(),
            events: vec![WebhookEvent::Completed],
            secret: domain::webhook::secret_from_bytes(&[1; 32]),
            previous_secret: Some(domain::webhook::secret_from_bytes(&[2; 32])),
            previous_secret_expires_at: Timestamp::from_millis(now.millis() + 1000),
            created_at: now,
            disabled_at: None,
            disabled_reason: None,
        }
    }

    #[test]
    fn the_previous_secret_signs_until_its_overlap_ends() {
        let now = Timestamp::from_millis(1_700_000_000_000).unwrap();
        let endpoint = endpoint(now);
        assert_eq!(endpoint.signing_keys(now), vec![vec![1; 32], vec![2; 32]]);
        let later = Timestamp::from_millis(now.millis() + 1000).unwrap();
        assert_eq!(endpoint.signing_keys(later), vec![vec![1; 32]]);
        assert!(endpoint.wants(WebhookEvent::Completed));
        assert!(!endpoint.wants(WebhookEvent::Started));
        let shown = format!("{endpoint:?}");
        assert!(
            !shown.contains(&endpoint.secret)
                && !shown.contains(endpoint.previous_secret.as_deref().unwrap_or("-"))
                && !shown.contains("whsec_"),
            "{shown}"
        );
    }

    #[test]
    fn a_delivery_keeps_its_latest_attempts() {
        let now = Timestamp::from_millis(1_700_000_000_000).unwrap();
        let mut delivery = Delivery {
            id: "msg_1".into(),
            endpoint_id: "ep_1".into(),
            account_id: AccountId::parse("acme").unwrap(),
            action_id: ActionId::parse("01JDQ6V4J8Q0Y5Z6X7W8V9T0S1").unwrap(),
            seq: 3,
            event_type: WebhookEvent::Started,
            body: "{}".into(),
            created_at: now,
            state: DeliveryState::Pending,
            attempt_count: 0,
            failed_in_round: 0,
            attempts: Vec::new(),
            next_attempt_at: None,
            failure_reason: None,
        };
        for code in 0..(KEEP_ATTEMPTS as u16 + 5) {
            delivery.record(Attempt {
                at: now,
                status_code: Some(code),
                error: None,
                duration_ms: 1,
            });
        }
        assert_eq!(delivery.attempts.len(), KEEP_ATTEMPTS);
        assert_eq!(delivery.attempt_count, KEEP_ATTEMPTS as u32 + 5);
        assert_eq!(delivery.attempts[0].status_code, Some(5));
        assert_eq!(delivery.due_member(), "acme ep_1 msg_1");
    }

    /// A delivery a script failed (`webhook_enqueue.lua`, past the pending bound) reads
    /// back, though cjson wrote its empty attempts as `{}`.
    #[test]
    fn a_delivery_reencoded_by_cjson_reads_back() {
        let json = r#"{"id":"msg_1","endpointId":"ep_1","accountId":"acme","actionId":"01JDQ6V4J8Q0Y5Z6X7W8V9T0S1","seq":3,"eventType":"action.started","body":"{}","createdAt":"2026-01-01T00:00:00.000Z","state":"failed","attemptCount":0,"failedInRound":0,"attempts":{},"failureReason":"too many"}"#;
        let delivery: Delivery = serde_json::from_str(json).unwrap();
        assert!(delivery.attempts.is_empty());
        assert_eq!(delivery.state, DeliveryState::Failed);
        assert_eq!(delivery.failure_reason.as_deref(), Some("too many"));
    }
}
