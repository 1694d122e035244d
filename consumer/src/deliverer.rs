//! Webhook delivery (decision 0053): every consumer process runs one intake and
//! `WEBHOOK_DELIVERY_CONCURRENCY` senders, so scaling out consumers scales delivery.
//!
//! The intake reads each partition's hooks stream (`P:{n}:hooks`, written by `xadd_event`
//! with every lifecycle event) through the group `webhooks`, takes over entries a dead
//! process left (`XAUTOCLAIM`), and turns an entry into one stored delivery per endpoint of
//! the action's account that subscribes to the event, each with a `webhook-id` derived from
//! (endpoint, action, seq), then acknowledges and deletes the entry. Reading an entry twice
//! (a crash before the acknowledgement) stores nothing twice. What an entry costs is
//! bounded: nothing past two reads unless an endpoint subscribes, and never a fold of a
//! long stream (`view_at`); partitions are taken in concurrently, and a failing entry is
//! retried with backoff, then given up.
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
const FOLD_PAGE_EVENTS: usize = 64;
/// The longest event seq whose view is folded from the start of the action's stream when
/// the projected view is already past it (a few reads, at most `FOLD_MAX_BYTES`).
const FOLD_FROM_START_MAX: u64 = FOLD_PAGE_EVENTS as u64;
/// The most events folded forward from a projected view that is behind an event.
const FOLD_AHEAD_MAX: u64 = 1024;
/// The most bytes of events one fold reads: a settled batch's event may keep megabytes of
/// records, and the intake serves every tenant.
const FOLD_MAX_BYTES: usize = 32 << 20;
/// Times a hooks entry is delivered to the intake (XPENDING's count) before it is given up.
const MAX_INTAKE_DELIVERIES: u64 = 10;
/// The intake's pause after a round in which something failed, doubling up to the max.
const INTAKE_BACKOFF_START: Duration = Duration::from_millis(100);
const INTAKE_BACKOFF_MAX: Duration = Duration::from_secs(5);

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
    /// Attempts one account may have under way at once (every process' senders together).
    pub account_in_flight: usize,
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
    #[error("the projector is too far behind action {0} for its event {1}; taken in again later")]
    Behind(ActionId, u64),
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
        // After a restart, one pass over this process' own pending entries, each stream's
        // read resuming after the last entry it returned (an entry that fails again stays
        // pending and is taken over once idle, like any other), then new entries only.
        let mut own_pending: Option<Vec<String>> = Some(vec!["0".to_owned(); streams.len()]);
        let mut last_claim: Option<Instant> = None;
        let mut backoff = INTAKE_BACKOFF_START;
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
            let read = if let Some(after) = own_pending.as_mut() {
                let read = work::read_own_pending(
                    &mut conn,
                    &streams,
                    after,
                    WEBHOOKS_GROUP,
                    &self.name,
                    ENTRIES_PER_READ,
                )
                .await?;
                if read.is_empty() {
                    own_pending = None;
                }
                read
            } else {
                let block = if entries.is_empty() {
                    self.settings.block
                } else {
                    Duration::ZERO
                };
                work::read_group(
                    &mut conn,
                    &streams,
                    WEBHOOKS_GROUP,
                    &self.name,
                    ReadFrom::New,
                    ENTRIES_PER_READ,
                    block,
                )
                .await?
            };
            entries.extend(read);
            if self.take_in_all(entries).await {
                backoff = INTAKE_BACKOFF_START;
                continue;
            }
            // Something failed (Redis or MongoDB away, most likely): no spinning on it.
            last_claim = None;
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(INTAKE_BACKOFF_MAX);
        }
        Ok(())
    }

    /// Takes in entries read from several partitions: each partition's in order, the
    /// partitions concurrently, so that one slow entry holds up its partition only for this
    /// round. True when every entry was taken in (or given up).
    async fn take_in_all(&self, entries: Vec<(String, StreamId)>) -> bool {
        let mut by_stream: Vec<(String, Vec<StreamId>)> = Vec::new();
        for (stream, entry) in entries {
            match by_stream.iter_mut().find(|(s, _)| *s == stream) {
                Some((_, list)) => list.push(entry),
                None => by_stream.push((stream, vec![entry])),
            }
        }
        let rounds = by_stream.iter().map(|(stream, entries)| async move {
            let mut all = true;
            for entry in entries {
                all &= self.take_in_or_give_up(stream, entry).await;
            }
            all
        });
        futures::future::join_all(rounds)
            .await
            .into_iter()
            .all(|ok| ok)
    }

    /// Takes in one entry; when that fails, the entry stays pending (taken over once idle)
    /// unless it has been delivered `MAX_INTAKE_DELIVERIES` times already: then it is given
    /// up (logged at error) so that it cannot hold the intake forever.
    async fn take_in_or_give_up(&self, stream: &str, entry: &StreamId) -> bool {
        let Err(error) = self.take_in(stream, entry).await else {
            return true;
        };
        let mut conn = self.store.connection();
        let deliveries = work::delivery_count(&mut conn, stream, WEBHOOKS_GROUP, &entry.id)
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        if deliveries >= MAX_INTAKE_DELIVERIES {
            tracing::error!(
                %error,
                stream,
                entry = %entry.id,
                deliveries,
                metric = "webhook_hooks_entry_given_up",
                "a hooks entry failed every time it was taken in; given up, its webhooks are not sent"
            );
            let discarded = work::discard(
                &mut conn,
                stream,
                WEBHOOKS_GROUP,
                std::slice::from_ref(&entry.id),
            )
            .await;
            return discarded.is_ok();
        }
        tracing::warn!(%error, stream, entry = %entry.id, deliveries, "could not store the deliveries of a hooks entry; it stays pending");
        false
    }

    /// Stores the deliveries of one hooks entry, then acknowledges and deletes it.
    async fn take_in(&self, stream: &str, entry: &StreamId) -> Result<(), DeliverError> {
        if entry.map.is_empty() {
            // A pending entry without fields: `MAXLEN` trimmed it from the stream before it
            // was taken in (the intake lagged by the whole cap). Its webhooks are lost.
            tracing::error!(
                stream,
                entry = %entry.id,
                metric = "webhook_hooks_entry_trimmed",
                "a pending hooks entry was trimmed from its stream before it was taken in; its webhooks are lost"
            );
        } else if let Some((action, seq, event_type, at)) = parse_entry(entry) {
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
        let candidates = domain::webhook::candidates_of_event(event_type);
        if candidates.is_empty() {
            return Ok(());
        }
        let Some(meta) = self.store.meta(action).await? else {
            return Ok(());
        };
        let endpoints = self.webhooks.list(&meta.account_id).await?;
        // No view work unless an endpoint of the account subscribes to what this event may
        // be sent as: most events cost two reads.
        if !endpoints
            .iter()
            .any(|endpoint| candidates.iter().any(|event| endpoint.wants(*event)))
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
        if !endpoints.iter().any(|endpoint| endpoint.wants(event)) {
            return Ok(());
        }
        let timestamp = at.or(folded_at).unwrap_or_else(infra::clock::now);
        let mut data = serde_json::to_value(&view).map_err(StoreError::from)?;
        if let Some(fields) = data.as_object_mut() {
            // The view is as of `lastSeq`; the event is `eventSeq` (they differ when the
            // view had moved on too far to fold back to the event, see `view_at`).
            fields.insert("eventSeq".to_owned(), seq.into());
        }
        let body = serde_json::json!({
            "type": event.as_str(),
            "timestamp": timestamp,
            "data": data,
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
                failure_reason: None,
            };
            if self.webhooks.enqueue(&delivery).await? {
                tracing::debug!(%action, seq, endpoint = %endpoint.id, delivery = %delivery.id, "webhook delivery stored");
            }
        }
        Ok(())
    }

    /// The action's view for the event `seq`, and when that event happened, at a bounded
    /// cost: the projected view when it stands exactly at `seq` (the usual `Completed`);
    /// folded forward from it when the projector is behind (at most `FOLD_AHEAD_MAX`
    /// events, else an error: the entry is taken in again once the projector caught up);
    /// when the projector is already past `seq`, folded from the stream's start only if
    /// `seq` is at most `FOLD_FROM_START_MAX` (one read), else the projected view as it
    /// stands, as of a later seq (its `lastSeq` says which). Never a fold of a long stream:
    /// a stream grows without bound (pause and resume of a scheduled action), and the
    /// intake serves every tenant.
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
        match stored {
            Some(stored) if stored.view.last_seq == seq => Ok(Some((stored.view, None))),
            Some(stored) if stored.view.last_seq < seq => {
                if seq - stored.view.last_seq > FOLD_AHEAD_MAX {
                    return Err(DeliverError::Behind(action, seq));
                }
                self.fold(action, Some(stored.view), Some(stored.checkpoint), seq)
                    .await
            }
            _ if seq <= FOLD_FROM_START_MAX => self.fold(action, None, None, seq).await,
            Some(stored) => {
                tracing::debug!(%action, seq, as_of = stored.view.last_seq, "the projected view is past a hooks entry; its delivery carries the view as it stands");
                Ok(Some((stored.view, None)))
            }
            None => Err(DeliverError::Behind(action, seq)),
        }
    }

    /// Folds the action's events after `checkpoint` into `view`, up to `seq`.
    async fn fold(
        &self,
        action: ActionId,
        mut view: Option<ActionView>,
        mut checkpoint: Option<String>,
        seq: u64,
    ) -> Result<Option<(ActionView, Option<Timestamp>)>, DeliverError> {
        let mut at = None;
        let mut bytes = 0;
        loop {
            let page = self
                .store
                .read_raw(action, checkpoint.as_deref(), FOLD_PAGE_EVENTS)
                .await?;
            for raw in &page {
                bytes += raw.data.len();
                if bytes > FOLD_MAX_BYTES {
                    // Events that keep megabytes of records: wait for the projector.
                    return Err(DeliverError::Behind(action, seq));
                }
                let event = raw.decode(action)?;
                if event.envelope.seq > seq {
                    return Ok(view.map(|view| (view, at)));
                }
                view = apply_event(view, &event.envelope)
                    .map_err(|error| StoreError::Corrupt(error.to_string()))?;
                at = Some(event.envelope.occurred_at);
            }
            let folded = view.as_ref().map_or(0, |view| view.last_seq);
            match page.last() {
                // A page may be cut short by its bytes: only an empty one is the end.
                Some(last) if folded < seq => {
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
                match self
                    .webhooks
                    .claim(*partition, lease_ms, self.settings.account_in_flight)
                    .await
                {
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
            crate::metrics::webhook_attempt("disabled", None);
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
        let result = match (outcome.status, delivery.state) {
            (Some(410), _) => "gone",
            (_, DeliveryState::Succeeded) => "succeeded",
            (_, DeliveryState::Pending) => "retrying",
            _ => "failed",
        };
        crate::metrics::webhook_attempt(result, Some(started.elapsed()));
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
