//! The hostile account: inputs a careless or malicious client sends. Each kind goes in
//! turn; what the api accepts is tracked like any other action (its contacts are checked
//! too), what it refuses must be refused with a 4xx, never a 5xx.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use domain::ActionType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use crate::api::Payload;
use crate::records::{self, email, Settings};
use crate::workload::{submit, Shared};

const KINDS: [&str; 9] = [
    "huge unknown field names",
    "NUL characters",
    "deep nesting in NDJSON lines",
    "JSON body nested 10,000 levels",
    "60 KB keys in NDJSON lines",
    "invalid emails",
    "duplicate-heavy records",
    "pacingBatchSize=1 with many records",
    "PATCH scheduledFor to now",
];

pub async fn run_hostile(shared: Arc<Shared>, account: String, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sent = 0u32;
    while !shared.stopping() {
        let kind = KINDS[sent as usize % KINDS.len()];
        sent += 1;
        shared.api.tally.bump("hostile requests", kind);
        let range = 1_000_000 + sent;
        let key = format!("soak-{account}-{seed}-{sent}");
        let (action_type, payload, records) = build(&mut rng, kind, &account, range);
        let accepted = submit(
            &shared,
            &payload,
            &key,
            &account,
            action_type,
            records,
            Some(kind),
        )
        .await?;
        if let Some(action) = accepted {
            let id = action.id.clone();
            shared.ledger.lock().ok().context("ledger")?.accept(action);
            follow_up(&shared, kind, &id).await?;
        }
        // Each kind comes round about once a minute.
        tokio::time::sleep(Duration::from_millis(rng.random_range(3_000..9_000))).await;
    }
    Ok(())
}

/// What a kind sends: the action type, the payload, and the records as the model sees them.
fn build(
    rng: &mut StdRng,
    kind: &str,
    account: &str,
    range: u32,
) -> (ActionType, Payload, Vec<Value>) {
    let address = |i: u32| email(account, range, i);
    let mut settings = Settings {
        account: account.to_owned(),
        action_type: "upsert",
        ..Settings::default()
    };
    let (format, records): (&str, Vec<Value>) = match kind {
        "huge unknown field names" => (
            "json",
            (0..40)
                .map(|i| {
                    let key = format!("x{}", "k".repeat(rng.random_range(1_000..30_000)));
                    if i % 4 == 0 {
                        json!({ "email": address(i), "name": "ok" })
                    } else {
                        json!({ "email": address(i), key: 1 })
                    }
                })
                .collect(),
        ),
        "NUL characters" => (
            "json",
            vec![
                json!({ "email": address(0), "name": "Ann\u{0}Lee" }),
                json!({ "email": address(1), "status": "\u{0}" }),
                json!({ "email": format!("r{range}-2\u{0}@{account}.soak.test"), "name": "nul in email" }),
                json!({ "email": address(3), "na\u{0}me": "nul in a key" }),
                json!({ "email": address(4), "name": "plain" }),
            ],
        ),
        "deep nesting in NDJSON lines" => {
            let nested = (0..100).fold(json!("deep"), |inner, _| json!([inner]));
            (
                "ndjson",
                vec![
                    json!({ "email": address(0), "name": nested }),
                    json!({ "email": address(1), "status": { "a": { "b": { "c": "d" } } } }),
                    json!({ "email": address(2), "name": "flat" }),
                ],
            )
        }
        "60 KB keys in NDJSON lines" => (
            "ndjson",
            (0..30)
                .map(|i| {
                    let key = format!("k{i}-{}", "K".repeat(60 * 1024));
                    if i % 5 == 0 {
                        json!({ "email": address(i), "age": 30 })
                    } else {
                        json!({ "email": address(i), key: "v" })
                    }
                })
                .collect(),
        ),
        "invalid emails" => ("json", invalid_emails(account, range)),
        "duplicate-heavy records" => (
            "json",
            (0..3_000)
                .map(|i| {
                    let base = address(i % 10);
                    let variant = if i % 3 == 0 {
                        base.to_uppercase()
                    } else {
                        format!("  {base}\t")
                    };
                    json!({ "email": variant, "name": format!("dup {i}") })
                })
                .collect(),
        ),
        "pacingBatchSize=1 with many records" => {
            // Every record its own batch even once unpaced: 250 batches, each with the whole
            // per-batch cost (on FerretDB here, up to a second under load).
            settings.pacing = Some((1, 1));
            (
                "ndjson",
                (0..250)
                    .map(|i| json!({ "email": address(i), "status": "drip" }))
                    .collect(),
            )
        }
        // Replaced by the raw body below; as the model sees it, if the api took it.
        "JSON body nested 10,000 levels" => ("json", vec![json!("<nested 10,000 levels>")]),
        _ => {
            let later = Utc::now() + chrono::Duration::minutes(10);
            settings.scheduled_for =
                Some(later.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            (
                "json",
                (0..50)
                    .map(|i| json!({ "email": address(i), "age": i }))
                    .collect(),
            )
        }
    };
    let mut records = records;
    let mut payload = records::encode(format, &settings, &records);
    if let Payload::Upload { bytes, .. } = &mut payload {
        if kind.starts_with("deep nesting") {
            // Past any parser's depth limit: this line is a malformed record.
            bytes.extend_from_slice(&deeply_nested(10_000));
            bytes.push(b'\n');
            records.push(json!("<nested 10,000 levels>"));
        }
    }
    if kind.starts_with("JSON body nested") {
        let mut body = format!(
            r#"{{"entityType":"contact","actionType":"upsert","data":[{{"email":"{}","name":"#,
            email(account, range, 0)
        )
        .into_bytes();
        body.extend_from_slice(&deeply_nested(10_000));
        body.extend_from_slice(b"}]}");
        payload = Payload::RawJson {
            account: account.to_owned(),
            bytes: body,
        };
    }
    (ActionType::Upsert, payload, records)
}

fn invalid_emails(account: &str, range: u32) -> Vec<Value> {
    let long_local = "l".repeat(70);
    let long = format!("{}@{account}.soak.test", "a".repeat(250));
    let valid = email(account, range, 0);
    vec![
        json!({ "email": "", "name": "x" }),
        json!({ "email": "plain", "name": "x" }),
        json!({ "email": "a@b", "name": "x" }),
        json!({ "email": "a@@b.com", "name": "x" }),
        json!({ "email": "@b.com", "name": "x" }),
        json!({ "email": "a b@c.com", "name": "x" }),
        json!({ "email": "a\u{200B}@b.com", "name": "x" }),
        json!({ "email": format!("{long_local}@b.com"), "name": "x" }),
        json!({ "email": long, "name": "x" }),
        json!({ "email": 42, "name": "x" }),
        json!({ "email": null, "name": "x" }),
        json!({ "name": "no email" }),
        json!("not an object"),
        json!({ "email": valid, "name": "the one valid record" }),
    ]
}

/// `[[[...]]]`, `depth` levels: built as text, since no `Value` that deep can be dropped
/// without overflowing the stack.
fn deeply_nested(depth: usize) -> Vec<u8> {
    let mut text = vec![b'['; depth];
    text.extend(std::iter::repeat_n(b']', depth));
    text
}

/// What a kind does after its action is accepted.
async fn follow_up(shared: &Shared, kind: &str, id: &str) -> Result<()> {
    let path = format!("/bulk-actions/{id}");
    let body = match kind {
        "pacingBatchSize=1 with many records" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json!({ "pacing": null })
        }
        "PATCH scheduledFor to now" => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            json!({ "scheduledFor": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true) })
        }
        _ => return Ok(()),
    };
    let reply = shared
        .api
        .call("patch", Method::PATCH, &path, Some(&body))
        .await?;
    let code = reply.body["error"]["code"].as_str().unwrap_or("");
    shared.api.tally.bump(
        "controls",
        format!("hostile patch {} {code}", reply.status)
            .trim()
            .to_owned(),
    );
    if reply.status != 200 {
        shared.api.tally.violation(
            "hostile_patch_refused",
            format!("{kind} {id}"),
            format!("{} {}", reply.status, reply.body),
        );
    } else if body.get("scheduledFor").is_some() && reply.body["status"] == "scheduled" {
        // A start moved to now must start: the answer may say queued or running, or
        // scheduled for at most now.
        let still = reply.body["scheduledFor"].as_str().unwrap_or("");
        let ahead = chrono::DateTime::parse_from_rfc3339(still)
            .map(|at| at.with_timezone(&Utc) > Utc::now())
            .unwrap_or(true);
        if ahead {
            shared.api.tally.violation(
                "patch_to_now_ignored",
                id,
                format!("PATCH {body} answered 200 with status scheduled for {still}"),
            );
        }
    }
    Ok(())
}
