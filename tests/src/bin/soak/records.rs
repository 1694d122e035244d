//! The records the well-behaved accounts send, and the three ways of sending them.
//!
//! Every action works on one email range of its account (`r<range>-<i>@<account>.soak.test`),
//! so the soak can tell what each contact should end as: ranges are disjoint, and a range
//! gets a further action only once the previous one on it is final.

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Map, Value};

use crate::api::Payload;

const STATUSES: [&str; 4] = ["lead", "customer", "churned", "prospect"];
/// Per 1,000 records: refused by validation, and repeats of an earlier email in the action.
const INVALID_PER_MILLE: u32 = 20;
const DUPLICATE_PER_MILLE: u32 = 30;

pub fn email(account: &str, range: u32, i: u32) -> String {
    format!("r{range}-{i}@{account}.soak.test")
}

/// The settings of a submission besides its records.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub account: String,
    pub action_type: &'static str,
    /// RFC 3339.
    pub scheduled_for: Option<String>,
    /// `(batchSize, intervalSeconds)`.
    pub pacing: Option<(u32, u32)>,
    pub max_records_per_minute: Option<u32>,
}

/// Records for `indices` of a range: mostly valid with a random subset of fields (at least
/// one, so an update has something to change), a few invalid, a few repeats of an earlier
/// email in another case. `csv` keeps to what a CSV row can say (no unknown fields).
pub fn generate(
    rng: &mut StdRng,
    account: &str,
    range: u32,
    indices: &[u32],
    csv: bool,
) -> Vec<Value> {
    let mut records = Vec::with_capacity(indices.len());
    for (position, &i) in indices.iter().enumerate() {
        let roll = rng.random_range(0..1000);
        let record = if roll < INVALID_PER_MILLE {
            invalid(rng, account, range, i, csv)
        } else if roll < INVALID_PER_MILLE + DUPLICATE_PER_MILLE && position > 0 {
            let earlier = indices[rng.random_range(0..position)];
            let mut repeat = fields(rng, i);
            repeat.insert(
                "email".into(),
                json!(format!(
                    " {} ",
                    email(account, range, earlier).to_uppercase()
                )),
            );
            Value::Object(repeat)
        } else {
            let mut record = fields(rng, i);
            record.insert("email".into(), json!(email(account, range, i)));
            Value::Object(record)
        };
        records.push(record);
    }
    records
}

fn fields(rng: &mut StdRng, i: u32) -> Map<String, Value> {
    let mut record = Map::new();
    // 1..=7: a non-empty subset of name, age, status.
    let which = rng.random_range(1..8u8);
    if which & 1 != 0 {
        record.insert(
            "name".into(),
            json!(format!("Name {i} v{}", rng.random_range(0..1000))),
        );
    }
    if which & 2 != 0 {
        record.insert("age".into(), json!(rng.random_range(0..=150)));
    }
    if which & 4 != 0 {
        record.insert(
            "status".into(),
            json!(STATUSES[rng.random_range(0..STATUSES.len())]),
        );
    }
    record
}

fn invalid(rng: &mut StdRng, account: &str, range: u32, i: u32, csv: bool) -> Value {
    let address = email(account, range, i);
    match rng.random_range(0..if csv { 4 } else { 5 }) {
        0 => json!({ "email": address.replace('@', "-at-"), "name": "no at" }),
        1 => json!({ "email": address, "age": "old" }),
        2 => json!({ "email": address, "age": 151 }),
        3 => json!({ "email": address, "name": "n".repeat(300) }),
        _ => json!({ "email": address, "phone": "555-0100" }),
    }
}

/// The records as a JSON body, an NDJSON upload or a CSV upload.
pub fn encode(format: &str, settings: &Settings, records: &[Value]) -> Payload {
    match format {
        "json" => {
            let mut body = json!({
                "accountId": settings.account,
                "entityType": "contact",
                "actionType": settings.action_type,
                "data": records,
            });
            if let Some(at) = &settings.scheduled_for {
                body["scheduledFor"] = json!(at);
            }
            if let Some((batch_size, interval_seconds)) = settings.pacing {
                body["pacing"] =
                    json!({ "batchSize": batch_size, "intervalSeconds": interval_seconds });
            }
            if let Some(max) = settings.max_records_per_minute {
                body["maxRecordsPerMinute"] = json!(max);
            }
            Payload::Json(body)
        }
        "csv" => Payload::Upload {
            query: query(settings),
            content_type: "text/csv",
            bytes: csv_bytes(records),
        },
        _ => {
            let mut bytes = Vec::new();
            for record in records {
                bytes.extend_from_slice(record.to_string().as_bytes());
                bytes.push(b'\n');
            }
            Payload::Upload {
                query: query(settings),
                content_type: "application/x-ndjson",
                bytes,
            }
        }
    }
}

pub fn query(settings: &Settings) -> String {
    let mut query = format!(
        "?accountId={}&entityType=contact&actionType={}",
        settings.account, settings.action_type
    );
    if let Some(at) = &settings.scheduled_for {
        query.push_str(&format!("&scheduledFor={}", at.replace('+', "%2B")));
    }
    if let Some((batch_size, interval_seconds)) = settings.pacing {
        query.push_str(&format!(
            "&pacingBatchSize={batch_size}&pacingIntervalSeconds={interval_seconds}"
        ));
    }
    if let Some(max) = settings.max_records_per_minute {
        query.push_str(&format!("&maxRecordsPerMinute={max}"));
    }
    query
}

/// CSV with the header `email,name,age,status`; an absent field is an empty cell, which
/// the api reads as absent, so the row means exactly the JSON record.
fn csv_bytes(records: &[Value]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let header = ["email", "name", "age", "status"];
    let _ = writer.write_record(header);
    for record in records {
        let cells = header.map(|field| match &record[field] {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        let _ = writer.write_record(&cells);
    }
    writer.into_inner().unwrap_or_default()
}
