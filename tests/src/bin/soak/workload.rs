//! The well-behaved accounts: each submits a steady mix of every action type, in JSON,
//! NDJSON and CSV, mostly small, a few large at set points of the run, and cancels, pauses,
//! resumes and PATCHes some of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use domain::ActionType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::api::{Api, Payload};
use crate::model::{Ledger, Submitted};
use crate::records::{self, Settings};

/// What every driver shares.
pub struct Shared {
    pub api: Api,
    pub ledger: Mutex<Ledger>,
    pub stop: Arc<AtomicBool>,
    pub started: Instant,
    pub duration: Duration,
    /// Records per batch of the deployment: an action of at most this many is "small".
    pub batch_size: usize,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn elapsed_fraction(&self) -> f64 {
        self.started.elapsed().as_secs_f64() / self.duration.as_secs_f64().max(1.0)
    }
}

/// An email range of the account and the action working on it, if any.
struct Range {
    id: u32,
    capacity: u32,
    busy_with: Option<String>,
}

/// What a driver decided to send, and what to do to it afterwards.
struct Plan {
    range: u32,
    indices: Vec<u32>,
    action_type: ActionType,
    format: &'static str,
    settings: Settings,
    control: Option<Control>,
}

#[derive(Clone, Copy)]
enum Control {
    Cancel,
    PauseResume,
    Patch,
}

/// A large action is due once this fraction of the run has passed: `(fraction, records)`.
pub type LargeAction = (f64, u32);

pub async fn run_account(
    shared: Arc<Shared>,
    account: String,
    seed: u64,
    mut large: Vec<LargeAction>,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ranges: Vec<Range> = Vec::new();
    let mut controls = JoinSet::new();
    let mut submitted = 0u32;
    while !shared.stopping() {
        free_finished(&shared.api, &mut ranges).await;
        let due = large
            .first()
            .filter(|(at, _)| *at <= shared.elapsed_fraction());
        let plan = match due.map(|(_, size)| *size) {
            Some(size) => {
                large.remove(0);
                plan_large(&mut rng, &account, &mut ranges, size)
            }
            None => plan_mix(&mut rng, &account, &mut ranges),
        };
        submitted += 1;
        let key = format!("soak-{account}-{seed}-{submitted}");
        let id = submit_planned(&shared, &mut rng, &account, &plan, &key).await?;
        if let Some(range) = ranges.iter_mut().find(|range| range.id == plan.range) {
            range.busy_with = id.clone();
        }
        if let (Some(id), Some(control)) = (id, plan.control) {
            let shared = shared.clone();
            let delay = Duration::from_millis(rng.random_range(0..3_000));
            let scheduled = plan.settings.scheduled_for.is_some();
            controls.spawn(
                async move { control_action(&shared, &id, control, delay, scheduled).await },
            );
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(2_000..8_000))).await;
    }
    while let Some(done) = controls.join_next().await {
        done??;
    }
    Ok(())
}

/// Frees the ranges whose action is final (one attempt per action: an outage keeps it busy).
async fn free_finished(api: &Api, ranges: &mut [Range]) {
    for range in ranges.iter_mut() {
        let Some(id) = range.busy_with.clone() else {
            continue;
        };
        if let Some(view) = api.peek(&format!("/bulk-actions/{id}")).await {
            if matches!(
                view["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                range.busy_with = None;
            }
        }
    }
}

fn new_range(ranges: &mut Vec<Range>, capacity: u32) -> u32 {
    let id = ranges.len() as u32;
    ranges.push(Range {
        id,
        capacity,
        busy_with: None,
    });
    id
}

fn plan_large(rng: &mut StdRng, account: &str, ranges: &mut Vec<Range>, size: u32) -> Plan {
    let range = new_range(ranges, size);
    let action_type = if rng.random_bool(0.5) {
        ActionType::Create
    } else {
        ActionType::Upsert
    };
    // A JSON body is read whole: the largest go as streamed uploads.
    let format = match (size > 20_000, rng.random_bool(0.5)) {
        (true, true) => "ndjson",
        (true, false) => "csv",
        (false, _) => "json",
    };
    Plan {
        range,
        indices: (0..size).collect(),
        action_type,
        format,
        settings: settings(account, action_type),
        control: None,
    }
}

fn plan_mix(rng: &mut StdRng, account: &str, ranges: &mut Vec<Range>) -> Plan {
    // Mostly small: on FerretDB every update and delete scans the collection, and a
    // 2-core machine has to keep up with five accounts while being knocked over.
    let size = match rng.random_range(0..100) {
        0..80 => rng.random_range(1..=50),
        80..97 => rng.random_range(51..=500),
        _ => rng.random_range(501..=3_000),
    };
    let mut action_type = match rng.random_range(0..100) {
        0..25 => ActionType::Create,
        25..60 => ActionType::Upsert,
        60..80 => ActionType::Update,
        _ => ActionType::Delete,
    };
    let free: Vec<usize> = (0..ranges.len())
        .filter(|&i| ranges[i].busy_with.is_none() && ranges[i].capacity > 0)
        .collect();
    let follow_up = action_type != ActionType::Create && !free.is_empty() && rng.random_bool(0.8);
    let (range, indices) = if follow_up {
        let target = &mut ranges[free[rng.random_range(0..free.len())]];
        // Updates and deletes scan the collection on FerretDB: keep follow-ups medium.
        let count = size.min(target.capacity).min(1_000);
        let start = rng.random_range(0..=target.capacity - count);
        let mut indices: Vec<u32> = (start..start + count).collect();
        if action_type == ActionType::Upsert {
            // Some new contacts too: an upsert creates and updates in one action.
            let extra = rng.random_range(0..=count / 4);
            indices.extend(target.capacity..target.capacity + extra);
            target.capacity += extra;
        }
        (target.id, indices)
    } else {
        if action_type != ActionType::Upsert {
            action_type = ActionType::Create;
        }
        (new_range(ranges, size), (0..size).collect())
    };
    let format = match rng.random_range(0..100) {
        0..40 => "json",
        40..75 => "ndjson",
        _ => "csv",
    };
    let mut settings = settings(account, action_type);
    let extra = rng.random_range(0..100);
    if extra < 8 {
        let at = Utc::now() + chrono::Duration::milliseconds(rng.random_range(2_000..15_000));
        settings.scheduled_for = Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    } else if extra < 14 && indices.len() <= 1_000 {
        settings.pacing = Some((rng.random_range(20..=200), 1));
    } else if extra < 19 {
        settings.max_records_per_minute = Some(rng.random_range(30_000..=120_000));
    }
    let control = match rng.random_range(0..100) {
        0..6 => Some(Control::Cancel),
        6..14 => Some(Control::PauseResume),
        14..20 => Some(Control::Patch),
        _ => None,
    };
    Plan {
        range,
        indices,
        action_type,
        format,
        settings,
        control,
    }
}

fn settings(account: &str, action_type: ActionType) -> Settings {
    Settings {
        account: account.to_owned(),
        action_type: action_type.as_str(),
        ..Settings::default()
    }
}

/// Submits a plan; returns the action id (`None` if the api refused it, a violation here).
async fn submit_planned(
    shared: &Shared,
    rng: &mut StdRng,
    account: &str,
    plan: &Plan,
    key: &str,
) -> Result<Option<String>> {
    let records = records::generate(
        rng,
        account,
        plan.range,
        &plan.indices,
        plan.format == "csv",
    );
    let payload = records::encode(plan.format, &plan.settings, &records);
    let fairness_candidate = records.len() <= shared.batch_size
        && plan.control.is_none()
        && plan.settings.scheduled_for.is_none()
        && plan.settings.pacing.is_none()
        && plan.settings.max_records_per_minute.is_none();
    let accepted = submit(
        shared,
        &payload,
        key,
        account,
        plan.action_type,
        records,
        None,
    )
    .await?;
    if let Some(action) = accepted {
        let id = action.id.clone();
        let mut action = action;
        action.fairness_candidate = fairness_candidate;
        shared.ledger.lock().ok().context("ledger")?.accept(action);
        return Ok(Some(id));
    }
    Ok(None)
}

/// Submits with retries; a `202` becomes a ledger entry (returned, not yet recorded), any
/// other answer is counted under `refused` and, for a well-behaved account, is a violation.
pub async fn submit(
    shared: &Shared,
    payload: &Payload,
    key: &str,
    account: &str,
    action_type: ActionType,
    records: Vec<Value>,
    hostile: Option<&'static str>,
) -> Result<Option<Submitted>> {
    let tally = &shared.api.tally;
    let reply = shared.api.submit(payload, key).await?;
    let format = payload.format();
    if reply.status != 202 {
        let code = reply.body["error"]["code"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        tally.bump("submissions refused", format!("{} {code}", reply.status));
        if hostile.is_none() {
            shared.api.tally.violation(
                "submission_refused",
                format!("{account} {key}"),
                format!("{} {}", reply.status, reply.body),
            );
        }
        return Ok(None);
    }
    if reply.header("idempotent-replayed").is_some() {
        tally.bump(
            "submissions",
            "replayed by Idempotency-Key after a lost answer",
        );
    }
    let id = reply.body["actionId"]
        .as_str()
        .context("a 202 without actionId")?
        .to_owned();
    shared.api.remember_owner(&id, account);
    tally.bump(
        "submissions",
        format!("accepted {} {format}", action_type.as_str()),
    );
    tally.add("submissions", "records submitted", records.len() as u64);
    Ok(Some(Submitted {
        id,
        account: account.to_owned(),
        action_type,
        format,
        records,
        fairness_candidate: false,
        hostile,
    }))
}

async fn control_action(
    shared: &Shared,
    id: &str,
    control: Control,
    delay: Duration,
    scheduled: bool,
) -> Result<()> {
    tokio::time::sleep(delay).await;
    let path = format!("/bulk-actions/{id}");
    match control {
        Control::Cancel => command(shared, id, "cancel").await,
        Control::PauseResume => {
            command(shared, id, "pause").await?;
            tokio::time::sleep(delay + Duration::from_secs(1)).await;
            command(shared, id, "resume").await
        }
        Control::Patch => {
            let body = if scheduled {
                let at = Utc::now() + chrono::Duration::seconds(2);
                json!({ "scheduledFor": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true) })
            } else if delay.as_millis().is_multiple_of(2) {
                json!({ "pacing": { "batchSize": 100, "intervalSeconds": 1 } })
            } else {
                json!({ "pacing": null, "maxRecordsPerMinute": 90_000 })
            };
            let reply = shared
                .api
                .call("patch", Method::PATCH, &path, Some(&body))
                .await?;
            count_control(shared, id, "patch", reply.status, &reply.body);
            Ok(())
        }
    }
}

/// `POST /bulk-actions/{id}/{verb}` through outages; counts the answer.
pub async fn command(shared: &Shared, id: &str, verb: &str) -> Result<()> {
    let reply = shared
        .api
        .call(
            verb,
            Method::POST,
            &format!("/bulk-actions/{id}/{verb}"),
            None,
        )
        .await?;
    count_control(shared, id, verb, reply.status, &reply.body);
    Ok(())
}

fn count_control(shared: &Shared, id: &str, verb: &str, status: u16, body: &Value) {
    let code = body["error"]["code"].as_str().unwrap_or("");
    shared.api.tally.bump(
        "controls",
        format!("{verb} {status} {code}").trim().to_owned(),
    );
    if !matches!(status, 200 | 409) {
        shared.api.tally.violation(
            "control_refused",
            format!("{verb} {id}"),
            format!("{status} {body}"),
        );
    }
}
