//! Per-action checks once everything is final: counts add up, every log line is there
//! exactly once (paged through `GET /bulk-actions/{id}/logs`), each line agrees with its
//! record and its code; then the reported outcomes are folded into the expected contacts.

use std::collections::BTreeMap;

use anyhow::Result;
use domain::{OutcomeCode, OutcomeStatus, RecordChange, RecordRules};
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use crate::api::Api;
use crate::model::{Contacts, Submitted};
use crate::report::Tally;

const LOG_PAGE: usize = 1_000;
/// Actions whose logs are read at once.
const IN_FLIGHT: usize = 4;

/// Checks every action; returns the expected contacts their outcomes imply.
pub async fn check_actions(
    api: &Api,
    actions: &[Submitted],
    views: &BTreeMap<String, Value>,
) -> Result<Contacts> {
    let codes: Vec<Result<Option<Vec<String>>>> = futures::stream::iter(actions)
        .map(|action| async move {
            let Some(view) = views.get(&action.id) else {
                return Ok(None);
            };
            check_action(api, action, view).await.map(Some)
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut contacts = Contacts::default();
    for (action, codes) in actions.iter().zip(codes) {
        let Some(codes) = codes? else { continue };
        for contradiction in contacts.fold(action, &codes) {
            api.tally.violation(
                "outcome_contradicts_state",
                format!("{} {} #{}", action.account, action.id, contradiction.index),
                format!(
                    "{} {}: reported {}, the contact's state before the action implies {}",
                    action.action_type.as_str(),
                    contradiction.email,
                    contradiction.code,
                    contradiction.expected
                ),
            );
        }
    }
    Ok(contacts)
}

/// One action's view and logs; returns the code of each record by index (empty strings
/// where a line is missing, so the fold treats the record as unapplied).
async fn check_action(api: &Api, action: &Submitted, view: &Value) -> Result<Vec<String>> {
    let tally = &api.tally;
    let subject = format!(
        "{} {} ({} {})",
        action.account,
        action.id,
        action.action_type.as_str(),
        action.format
    );
    let total = action.records.len();
    tally.bump(
        "checked",
        if action.hostile.is_some() {
            "actions of the hostile account"
        } else {
            "actions"
        },
    );
    let status = view["status"].as_str().unwrap_or("?");
    match action.hostile {
        Some(kind) => tally.bump("final statuses", format!("{status} (hostile: {kind})")),
        None => tally.bump("final statuses", status),
    }
    tally.add("checked", "records", total as u64);
    let count = |field: &str| view[field].as_u64().unwrap_or(u64::MAX);
    if count("totalRecords") != total as u64 {
        tally.violation(
            "total_mismatch",
            &subject,
            format!(
                "{total} records sent, the view says {}",
                view["totalRecords"]
            ),
        );
    }
    let parts = ["succeeded", "failed", "skipped", "unprocessed"].map(count);
    if parts.iter().sum::<u64>() != count("totalRecords") {
        tally.violation(
            "counts_do_not_add_up",
            &subject,
            format!("{parts:?} vs total {}", view["totalRecords"]),
        );
    }
    let lines = match read_logs(api, &action.id).await {
        Ok(lines) => lines,
        Err(error) => {
            // Still check the outcomes, from the stored buckets, so the contacts can be.
            tally.violation("logs_unreadable", &subject, format!("{error:#}"));
            stored_lines(api, &action.id).await?
        }
    };
    tally.add("checked", "log lines", lines.len() as u64);
    let mut codes = vec![String::new(); total];
    let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
    for line in &lines {
        let Some(index) = line["index"]
            .as_u64()
            .map(|i| i as usize)
            .filter(|i| *i < total)
        else {
            tally.violation("log_line_out_of_range", &subject, line.to_string());
            continue;
        };
        if !codes[index].is_empty() {
            tally.violation("log_line_twice", &subject, format!("index {index}: {line}"));
            continue;
        }
        let code = line["code"].as_str().unwrap_or("").to_owned();
        let status = serde_json::from_value::<OutcomeCode>(Value::from(code.clone()))
            .map(|code| code.status());
        if status.as_ref().map(OutcomeStatus::as_str).ok() != line["status"].as_str() {
            tally.violation("log_status_mismatch", &subject, line.to_string());
        }
        *by_status
            .entry(line["status"].as_str().unwrap_or("?"))
            .or_default() += 1;
        check_line_email(tally, &subject, action, index, line);
        codes[index] = code;
    }
    let missing = codes.iter().filter(|code| code.is_empty()).count();
    if missing > 0 {
        let first = codes.iter().position(String::is_empty).unwrap_or(0);
        tally.violation(
            "log_lines_missing",
            &subject,
            format!("{missing} of {total} missing, the first at index {first}"),
        );
    }
    for (field, part) in ["succeeded", "failed", "skipped", "unprocessed"]
        .iter()
        .zip(parts)
    {
        let logged = by_status.get(field).copied().unwrap_or(0);
        if logged != part {
            tally.violation(
                "logs_disagree_with_counts",
                &subject,
                format!("{logged} {field} lines, the view says {part}"),
            );
        }
    }
    Ok(codes)
}

/// A line names the normalised email of its record (when the record had a valid one).
fn check_line_email(tally: &Tally, subject: &str, action: &Submitted, index: usize, line: &Value) {
    let rules = RecordRules::contacts(action.action_type);
    let Ok(change) = RecordChange::parse(&action.records[index], &rules) else {
        return;
    };
    if line["email"].as_str() != Some(change.key.as_str()) {
        tally.violation(
            "log_line_wrong_email",
            subject,
            format!("index {index}: expected {}, got {line}", change.key),
        );
    }
}

/// The log lines as the projector stored them, in the api's shape.
async fn stored_lines(api: &Api, id: &str) -> Result<Vec<Value>> {
    let mut lines = Vec::new();
    for line in api.database().stored_log_lines(id).await? {
        let mut line = mongodb::bson::Bson::Document(line).into_relaxed_extjson();
        let status = serde_json::from_value::<OutcomeCode>(line["code"].clone())
            .map(|code| code.status().as_str())
            .unwrap_or("?");
        line["status"] = Value::from(status);
        lines.push(line);
    }
    Ok(lines)
}

/// Every log line of an action through the api, following `nextCursor`.
async fn read_logs(api: &Api, id: &str) -> Result<Vec<Value>> {
    let mut lines = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/bulk-actions/{id}/logs?limit={LOG_PAGE}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let reply = api.call("logs", Method::GET, &path, None).await?;
        if reply.status != 200 {
            api.tally.violation(
                "logs_refused",
                id,
                format!("{} {}", reply.status, reply.body),
            );
            return Ok(lines);
        }
        api.tally.bump("checked", "log pages read");
        lines.extend(reply.body["items"].as_array().cloned().unwrap_or_default());
        match reply.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(lines),
        }
    }
}

/// Each dead-lettered batch is in its partition's dead-letter stream exactly once, and the
/// views count as many.
pub async fn check_dead_letters(
    tally: &Tally,
    redis_url: &str,
    views: &BTreeMap<String, Value>,
) -> Result<()> {
    let mut conn = infra::redis_conn::shared(redis_url).await?;
    let keys = infra::Keys::new("test", 4);
    let mut copies: BTreeMap<(String, String), u32> = BTreeMap::new();
    for partition in keys.partitions() {
        let dead: redis::streams::StreamRangeReply =
            redis::AsyncCommands::xrange_all(&mut conn, keys.dead_letters(partition)).await?;
        for entry in dead.ids {
            let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
            *copies.entry((field("action"), field("batch"))).or_default() += 1;
        }
    }
    for ((action, batch), count) in &copies {
        if *count > 1 {
            tally.violation(
                "dead_letter_twice",
                format!("{action} batch {batch}"),
                format!("{count} copies in the dead-letter stream"),
            );
        }
    }
    let counted: u64 = views
        .values()
        .map(|view| view["batchesDeadLettered"].as_u64().unwrap_or(0))
        .sum();
    tally.add("checked", "dead-lettered batches", copies.len() as u64);
    if counted != copies.len() as u64 {
        tally.violation(
            "dead_letters_disagree_with_views",
            "all actions",
            format!(
                "{} batches in the dead-letter streams, the views count {counted}",
                copies.len()
            ),
        );
    }
    Ok(())
}
