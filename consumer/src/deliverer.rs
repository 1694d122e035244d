//! Webhook delivery (decision 0053): every consumer process runs one intake and
//! `WEBHOOK_DELIVERY_CONCURRENCY` senders, so scaling out consumers scales delivery.
//!
//! The intake reads each partition's hooks stream (`P:{n}:hooks`, written by `xadd_event`
//! with every lifecycle event) through the group `webhooks`, takes over entries a dead
//! process left (`XAUTOCLAIM`), and turns an entry into one stored delivery per endpoint of
//! the action's account that subscribes to the event, each with a `webhook-id` derived from
//! (endpoint, action, seq), then acknowledges and deletes the entry. Reading an entry twice
//! (a crash before the acknowledgement) stores nothing twice.
//!
//! A sender takes the next due attempt of a partition under a lease (`webhook_claim.lua`),
//! sends it (`http`), and records what came of it with the lease as its token; a sender
//! killed mid-attempt leaves the attempt due again when its lease ends, and whoever takes
//! it sends the same delivery under the same `webhook-id`: at least once.

mod http;

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::view::apply_event;
use domain::webhook::{RetrySchedule, WebhookEvent};
use domain::{ActionId, ActionView, Timestamp};
use infra::keys::WEBHOOKS_GROUP;
use infra::views::StoredActionView;
use infra::webhooks::{Attempt, Claim, Delivery, DeliveryState, Settled, Settlement, Webhooks};
use infra::work::{self, ReadFrom};
use infra::{EventStore, StoreError};
use mongodb::bson::doc;
use redis::streams::StreamId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Entries read from a hooks stream, and taken over, per round trip.
const ENTRIES_PER_READ: usize = 16;
/// Events read per round trip when folding an action's view up to an event.
const FOLD_PAGE_EVENTS: usize = 16;

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Senders in this process; 0 runs no deliverer at all.
    pub concurrency: usize,
    pub allow_private_networks: bool,
    pub schedule: RetrySchedule,
    /// Longest attempt; the lease on an attempt is longer, so it never ends mid-attempt.
    pub timeout: Duration,
    /// How long an idle sender waits before it looks for due attempts again.
    pub poll: Duration,
    /// Hooks entries pending this long with a process are presumed abandoned.
    pub claim_idle: Duration,
    /// The longest wait on an empty hooks stream before checking for shutdown.
    pub block: Duration,
}

impl DeliverySettings {
    fn lease_ms(&self) -> u64 {
        u64::try_from((self.timeout + Duration::from_secs(10)).as_millis()).unwrap_or(u64::MAX)
    }
}

#[derive(Clone)]
pub struct Deliverer {
    pub store: EventStore,
    pub database: mongodb::Database,
    pub webhooks: Webhooks,
    pub settings: Arc<DeliverySettings>,
    /// This process' name in the `webhooks` group.
    pub name: String,
    pub redis_url: String,
}

#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
}

impl Deliverer {
    /// Starts the intake and the senders; nothing when delivery is disabled.
    pub fn spawn(self, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        if self.settings.concurrency == 0 {
            return;
        }
        let client = match http::client(&self.settings) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "no HTTP client for webhooks; not delivering");
                return;
            }
        };
        tasks.spawn(self.clone().intake(shutdown.clone()));
        for number in 0..self.settings.concurrency {
            tasks.spawn(
                self.clone()
                    .send_loop(number, client.clone(), shutdown.clone()),
            );
        }
    }

    async fn intake(self, shutdown: CancellationToken) {
        let mut delays = infra::retry::reconnect_delays();
        while !shutdown.is_cancelled() {
            match self.serve_intake(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    let pause = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(%error, ?pause, "webhook intake failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    async fn serve_intake(&self, shutdown: &CancellationToken) -> Result<(), DeliverError> {
        let keys = self.store.keys();
        let streams: Vec<String> = keys.partitions().map(|p| keys.hooks(p)).collect();
        let mut conn = infra::redis_conn::blocking(&self.redis_url, self.settings.block)
            .await
            .map_err(StoreError::from)?;
        work::ensure_groups(&mut conn, &streams, WEBHOOKS_GROUP).await?;
        let mut shared = self.store.connection();
        let mut from = ReadFrom::OwnPending;
        let mut last_claim: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let mut entries = Vec::new();
            if last_claim.is_none_or(|at| at.elapsed() >= self.settings.claim_idle / 2) {
                last_claim = Some(Instant::now());
                for stream in &streams {
                    let claimed = work::claim_idle(
                        &mut shared,
                        stream,
                        WEBHOOKS_GROUP,
                        &self.name,
                        self.settings.claim_idle,
                        ENTRIES_PER_READ,
                    )
                    .await?;
                    entries.extend(claimed.into_iter().map(|entry| (stream.clone(), entry)));
                }
            }
            let block = if entries.is_empty() {
                self.settings.block
            } else {
                Duration::ZERO
            };
            let read = work::read_group(
                &mut conn,
                &streams,
                WEBHOOKS_GROUP,
                &self.name,
                from,
                ENTRIES_PER_READ,
                block,
            )
            .await?;
            if from == ReadFrom::OwnPending && read.is_empty() {
                from = ReadFrom::New;
            }
            entries.extend(read);
            for (stream, entry) in entries {
                // An entry that fails stays pending: read again by this process after a
                // restart, or taken over once idle.
                if let Err(error) = self.take_in(&stream, &entry).await {
                    tracing::warn!(%error, stream, entry = %entry.id, "could not store the deliveries of a hooks entry; it stays pending");
                    last_claim = None;
                }
            }
        }
        Ok(())
    }

    /// Stores the deliveries of one hooks entry, then acknowledges and deletes it.
    async fn take_in(&self, stream: &str, entry: &StreamId) -> Result<(), DeliverError> {
        if let Some((action, seq, event_type, at)) = parse_entry(entry) {
            self.store_deliveries(action, seq, &event_type, at).await?;
        } else {
            tracing::warn!(stream, entry = %entry.id, "an unreadable hooks entry; dropped");
        }
        let mut conn = self.store.connection();
        work::discard(
            &mut conn,
            stream,
            WEBHOOKS_GROUP,
            std::slice::from_ref(&entry.id),
        )
        .await?;
        Ok(())
    }

    async fn store_deliveries(
        &self,
        action: ActionId,
        seq: u64,
        event_type: &str,
        at: Option<Timestamp>,
    ) -> Result<(), DeliverError> {
        let Some(meta) = self.store.meta(action).await? else {
            return Ok(());
        };
        let endpoints = self.webhooks.list(&meta.account_id).await?;
        // Most accounts have no endpoint: no fold for them.
        if endpoints
            .iter()
            .all(|endpoint| endpoint.disabled_at.is_some())
        {
            return Ok(());
        }
        let Some((view, folded_at)) = self.view_at(action, seq).await? else {
            tracing::warn!(%action, seq, "no view of the action up to a hooks entry; not delivered");
            return Ok(());
        };
        let Some(event) = WebhookEvent::of_event(event_type, view.status) else {
            return Ok(());
        };
        let timestamp = at.or(folded_at).unwrap_or_else(infra::clock::now);
        let body = serde_json::json!({
            "type": event.as_str(),
            "timestamp": timestamp,
            "data": view,
        })
        .to_string();
        let now = infra::clock::now();
        for endpoint in endpoints.iter().filter(|endpoint| endpoint.wants(event)) {
            let delivery = Delivery {
                id: domain::webhook::message_id(&endpoint.id, action, seq),
                endpoint_id: endpoint.id.clone(),
                account_id: meta.account_id.clone(),
                action_id: action,
                seq,
                event_type: event,
                body: body.clone(),
                created_at: now,
                state: DeliveryState::Pending,
                attempt_count: 0,
                failed_in_round: 0,
                attempts: Vec::new(),
                next_attempt_at: Some(now),
            };
            if self.webhooks.enqueue(&delivery).await? {
                tracing::debug!(%action, seq, endpoint = %endpoint.id, delivery = %delivery.id, "webhook delivery stored");
            }
        }
        Ok(())
    }

    /// The action's view once event `seq` is folded, and when that event happened: the
    /// projected view when it is there exactly, else folded from it (or from the start, when
    /// it is already past `seq`).
    async fn view_at(
        &self,
        action: ActionId,
        seq: u64,
    ) -> Result<Option<(ActionView, Option<Timestamp>)>, DeliverError> {
        let stored = self
            .database
            .collection::<StoredActionView>(infra::mongo::ACTION_VIEWS)
            .find_one(doc! { "_id": action.to_string() })
            .await?;
        let (mut view, mut checkpoint) = match stored {
            Some(stored) if stored.view.last_seq == seq => return Ok(Some((stored.view, None))),
            Some(stored) if stored.view.last_seq < seq => {
                (Some(stored.view), Some(stored.checkpoint))
            }
            _ => (None, None),
        };
        let mut at = None;
        loop {
            let page = self
                .store
                .read(action, checkpoint.as_deref(), FOLD_PAGE_EVENTS)
                .await?;
            for event in &page {
                if event.envelope.seq > seq {
                    return Ok(view.map(|view| (view, at)));
                }
                view = apply_event(view, &event.envelope)
                    .map_err(|error| StoreError::Corrupt(error.to_string()))?;
                at = Some(event.envelope.occurred_at);
            }
            let folded = view.as_ref().map_or(0, |view| view.last_seq);
            match page.last() {
                Some(last) if page.len() == FOLD_PAGE_EVENTS && folded < seq => {
                    checkpoint = Some(last.position.clone());
                }
                _ => return Ok(view.map(|view| (view, at))),
            }
        }
    }

    async fn send_loop(self, number: usize, client: reqwest::Client, shutdown: CancellationToken) {
        let partitions: Vec<u32> = self.store.keys().partitions().collect();
        let lease_ms = self.settings.lease_ms();
        while !shutdown.is_cancelled() {
            let mut sent = false;
            let start = rand::random_range(0..partitions.len().max(1));
            for partition in partitions.iter().cycle().skip(start).take(partitions.len()) {
                match self.webhooks.claim(*partition, lease_ms).await {
                    Ok(Some(claim)) => {
                        sent = true;
                        if let Err(error) = self.attempt(&client, &claim).await {
                            tracing::warn!(%error, delivery = %claim.delivery_id, "webhook attempt not recorded; it is retried when its lease ends");
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, sender = number, "could not look for due webhook attempts");
                    }
                }
            }
            if !sent {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.settings.poll) => {}
                }
            }
        }
    }

    /// Makes the attempt `claim` holds and records it.
    async fn attempt(&self, client: &reqwest::Client, claim: &Claim) -> Result<(), DeliverError> {
        let endpoint = self
            .webhooks
            .get(&claim.account, &claim.endpoint_id)
            .await?;
        let delivery = self
            .webhooks
            .delivery(&claim.account, &claim.endpoint_id, &claim.delivery_id)
            .await?;
        let (Some(endpoint), Some(mut delivery)) = (endpoint, delivery) else {
            self.webhooks.drop_due(claim).await?;
            return Ok(());
        };
        let now = infra::clock::now();
        if endpoint.disabled_at.is_some() {
            delivery.state = DeliveryState::Failed;
            delivery.next_attempt_at = None;
            let settlement = Settlement {
                delivery,
                retry_in: None,
                disable: None,
            };
            self.webhooks.settle(claim, &settlement).await?;
            return Ok(());
        }
        let started = Instant::now();
        let outcome = http::send(client, &self.settings, &endpoint, &delivery, now).await;
        delivery.record(Attempt {
            at: now,
            status_code: outcome.status,
            error: outcome.error.clone(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        let mut disable = None;
        let mut retry_in = None;
        match outcome.status {
            Some(status) if (200..300).contains(&status) => {
                delivery.state = DeliveryState::Succeeded;
            }
            Some(410) => {
                delivery.state = DeliveryState::Failed;
                disable = Some((now, "the endpoint answered 410 Gone".to_owned()));
            }
            _ => {
                delivery.failed_in_round += 1;
                retry_in = self.settings.schedule.next_delay(
                    delivery.failed_in_round,
                    rand::random::<f64>(),
                    outcome.retry_after_ms,
                );
                delivery.state = if retry_in.is_some() {
                    DeliveryState::Pending
                } else {
                    DeliveryState::Failed
                };
            }
        }
        delivery.next_attempt_at = retry_in.and_then(|ms| {
            Timestamp::from_millis(now.millis() + i64::try_from(ms).unwrap_or(i64::MAX / 2))
        });
        tracing::info!(
            delivery = %delivery.id,
            endpoint = %endpoint.id,
            status = ?outcome.status,
            error = ?outcome.error,
            state = ?delivery.state,
            "webhook attempt"
        );
        let settlement = Settlement {
            delivery,
            retry_in,
            disable,
        };
        match self.webhooks.settle(claim, &settlement).await? {
            Settled::Recorded | Settled::Gone => {}
            Settled::LeaseLost => {
                tracing::warn!(delivery = %claim.delivery_id, "a webhook attempt outlasted its lease; another deliverer has it");
            }
        }
        Ok(())
    }
}

fn parse_entry(entry: &StreamId) -> Option<(ActionId, u64, String, Option<Timestamp>)> {
    let action = ActionId::parse(&entry.get::<String>("action")?)?;
    let seq = entry.get::<String>("seq")?.parse().ok()?;
    let event_type = entry.get::<String>("type")?;
    let at = entry
        .get::<String>("at")
        .and_then(|raw| Timestamp::parse_rfc3339(&raw));
    Some((action, seq, event_type, at))
}
