//! Cancel, pause, resume and PATCH of an action: read its lifecycle facts, let
//! `domain::lifecycle::decide` decide, and record the decision with the script of the
//! command (`lua/control.lua`, `lua/amend.lua`) if the facts are still the ones it saw
//! (the script compares `Facts::signature`). A decision made on facts that changed
//! meanwhile (a release, the last batch, another command) is made again on the new ones.

use domain::lifecycle::{self, Command, Facts, Pace, PaceSource, Refusal};
use domain::{AccountId, ActionId, EventPayload, Timestamp, SCHEMA_VERSION};
use ulid::Ulid;

use crate::event_store::StoreError;
use crate::roles::Submissions;

/// How often a decision is made again before giving up: facts change a handful of times
/// in an action's life, but an account may toggle pause and resume as fast as its request
/// budget allows.
const MAX_DECISIONS: usize = 32;

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed {
    /// Its events are in the action's stream.
    Recorded,
    /// It was so already (a repeated request): nothing was written.
    AlreadySo,
    UnknownAction,
    Refused(Refusal),
}

/// A short, growing, jittered pause before deciding again, so that commands racing on one
/// action take turns instead of colliding again at once.
fn stale_pause(round: usize) -> std::time::Duration {
    let ceiling_ms = 1 + 2 * u64::try_from(round).unwrap_or(u64::MAX).min(25);
    std::time::Duration::from_millis(rand::random_range(0..=ceiling_ms))
}

/// Script results (see the scripts' headers).
const RECORDED: i64 = 1;
const UNKNOWN_ACTION: i64 = -1;
const STALE: i64 = -5;

impl Submissions {
    /// Executes `command` on `action`. `default_batch_size` is the deployment's, for an
    /// action created before its own was recorded (a change of pace is paced per batch).
    /// `api_key_id` is the key that asked.
    pub async fn execute(
        &self,
        action: ActionId,
        command: &Command,
        default_batch_size: u32,
        api_key_id: Option<&str>,
        at: Timestamp,
    ) -> Result<Executed, StoreError> {
        for round in 0..MAX_DECISIONS {
            let Some(ActionFacts {
                mut facts,
                account,
                batch_size,
            }) = self.lifecycle_facts(action).await?
            else {
                return Ok(Executed::UnknownAction);
            };
            let changes_pace =
                matches!(command, Command::Amend(amendment) if amendment.pace.is_some());
            if changes_pace && facts.pace_source == PaceSource::Events && !facts.finished() {
                facts.pace = self.pace_in_events(action).await?;
            }
            let events = match lifecycle::decide(&facts, command, api_key_id) {
                Err(refusal) => return Ok(Executed::Refused(refusal)),
                Ok(events) if events.is_empty() => return Ok(Executed::AlreadySo),
                Ok(events) => events,
            };
            let code = match command {
                Command::Amend(_) => {
                    let batch_size = batch_size.unwrap_or(default_batch_size);
                    self.record_amendment(action, &events, batch_size, &facts, at)
                        .await?
                }
                _ => {
                    self.record_control(action, &account, command, &events, &facts, at)
                        .await?
                }
            };
            match code {
                RECORDED => return Ok(Executed::Recorded),
                UNKNOWN_ACTION => return Ok(Executed::UnknownAction),
                STALE => tokio::time::sleep(stale_pause(round)).await,
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "lifecycle script answered {other}"
                    )))
                }
            }
        }
        tracing::warn!(%action, "the action's facts changed under {MAX_DECISIONS} decisions in a row");
        Err(StoreError::Contended(action))
    }

    /// The facts `decide` looks at, with the action's account (whose queue a control
    /// command moves it in) and batch size, read in one step.
    async fn lifecycle_facts(&self, action: ActionId) -> Result<Option<ActionFacts>, StoreError> {
        let partition = self.keys.partition_of(action);
        const FIELDS: [&str; 7] = [
            "batches",
            "done",
            "cancelled",
            "paused",
            "account",
            "pace",
            "batchSize",
        ];
        let (meta, start): ([Option<String>; 7], Option<f64>) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(self.keys.meta(action))
            .arg(&FIELDS[..])
            .zscore(self.keys.schedule(partition), action.to_string())
            .query_async(&mut self.conn.clone())
            .await?;
        let [batches, done, cancelled, paused, account, pace, batch_size] = meta;
        let (Some(batches), Some(account)) = (batches, account) else {
            return Ok(None);
        };
        let corrupt = |field: &str| StoreError::Corrupt(format!("meta of {action}: bad {field}"));
        let number = |raw: Option<String>, field: &str| -> Result<Option<u32>, StoreError> {
            raw.map(|raw| raw.parse().map_err(|_| corrupt(field)))
                .transpose()
        };
        let mut facts = Facts {
            batches: number(Some(batches), "batches")?.unwrap_or(0),
            settled: number(done, "done")?.unwrap_or(0),
            cancelled: cancelled.as_deref() == Some("1"),
            paused: paused.as_deref() == Some("1"),
            scheduled: start.is_some(),
            pace: Pace::default(),
            pace_source: PaceSource::Events,
        };
        if let Some(json) = pace {
            facts.pace = serde_json::from_str(&json).map_err(|_| corrupt("pace"))?;
            facts.pace_source = PaceSource::Meta;
        }
        Ok(Some(ActionFacts {
            facts,
            account: AccountId::parse(&account).map_err(|_| corrupt("account"))?,
            batch_size: number(batch_size, "batchSize")?,
        }))
    }

    /// The pace the latest `PacingChanged` (or else `Created`) records: for an action whose
    /// meta does not hold it, one created by a build before the meta did.
    async fn pace_in_events(&self, action: ActionId) -> Result<Pace, StoreError> {
        const PAGE: usize = 64;
        let mut before: Option<String> = None;
        loop {
            let page = self.read_back_raw(action, before.as_deref(), PAGE).await?;
            for raw in &page {
                if matches!(raw.type_name.as_str(), "PacingChanged" | "Created") {
                    let event = raw.decode(action)?;
                    return Ok(Pace::recorded_by(&event.envelope.payload).unwrap_or_default());
                }
            }
            match page.last() {
                Some(last) => before = Some(last.position.clone()),
                None => return Ok(Pace::default()),
            }
        }
    }

    async fn record_control(
        &self,
        action: ActionId,
        account: &AccountId,
        command: &Command,
        events: &[EventPayload],
        facts: &Facts,
        at: Timestamp,
    ) -> Result<i64, StoreError> {
        let name = match command {
            Command::Cancel => "cancel",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Amend(_) => return Err(StoreError::Corrupt("an amendment as control".into())),
        };
        let [event] = events else {
            return Err(StoreError::Corrupt(format!(
                "{name} decided {} events",
                events.len()
            )));
        };
        let partition = self.keys.partition_of(action);
        Ok(self
            .scripts
            .control
            .key(self.keys.meta(action))
            .key(self.keys.events(action))
            .key(self.keys.feed(partition))
            .key(self.keys.work(partition))
            .key(self.keys.schedule(partition))
            .key(self.keys.account_queue(partition, account))
            .key(self.keys.ready(partition))
            .key(self.keys.parked(action))
            .key(self.keys.dispatch(partition))
            .key(self.keys.hooks(partition))
            .arg(name)
            .arg(action.to_string())
            .arg(SCHEMA_VERSION)
            .arg(Ulid::new().to_string())
            .arg(event.type_name())
            .arg(at.to_string())
            .arg(event.data_json())
            .arg(facts.signature())
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    async fn record_amendment(
        &self,
        action: ActionId,
        events: &[EventPayload],
        batch_size: u32,
        facts: &Facts,
        at: Timestamp,
    ) -> Result<i64, StoreError> {
        let partition = self.keys.partition_of(action);
        let rescheduled = events
            .iter()
            .find(|event| matches!(event, EventPayload::Rescheduled { .. }));
        let paced = events
            .iter()
            .find(|event| matches!(event, EventPayload::PacingChanged { .. }));
        let start_at = match rescheduled {
            Some(EventPayload::Rescheduled { scheduled_for, .. }) => {
                scheduled_for.millis().to_string()
            }
            _ => String::new(),
        };
        let pace = paced.and_then(Pace::recorded_by).unwrap_or_default();
        let bucket =
            domain::pacing::action_bucket(pace.pacing, pace.max_records_per_minute, batch_size);
        let data = |event: Option<&EventPayload>| event.map(EventPayload::data_json);
        Ok(self
            .scripts
            .amend
            .key(self.keys.meta(action))
            .key(self.keys.events(action))
            .key(self.keys.feed(partition))
            .key(self.keys.schedule(partition))
            .key(self.keys.hooks(partition))
            .arg(action.to_string())
            .arg(SCHEMA_VERSION)
            .arg(at.to_string())
            .arg(start_at)
            .arg(if paced.is_some() { "1" } else { "0" })
            .arg(
                bucket
                    .map(|b| b.emission_ms.to_string())
                    .unwrap_or_default(),
            )
            .arg(bucket.map(|b| b.burst).unwrap_or_default())
            .arg(Ulid::new().to_string())
            .arg("Rescheduled")
            .arg(data(rescheduled).unwrap_or_default())
            .arg(Ulid::new().to_string())
            .arg("PacingChanged")
            .arg(data(paced).unwrap_or_default())
            .arg(facts.signature())
            .arg(pace.to_json())
            .invoke_async(&mut self.conn.clone())
            .await?)
    }
}

/// What `execute` reads of an action.
struct ActionFacts {
    facts: Facts,
    account: AccountId,
    /// `None` for an action created before its batch size was recorded.
    batch_size: Option<u32>,
}
