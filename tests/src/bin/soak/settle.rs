//! After the chaos: let every action become final within a bound, nudging only what waits
//! on purpose (a paused action is resumed, a far schedule moved to now, a drip unpaced),
//! and find actions the soak never got a `202` for.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Value};

use crate::api::Api;
use crate::model::Submitted;

const FINAL: [&str; 3] = ["completed", "failed", "cancelled"];

pub fn is_final(view: &Value) -> bool {
    view["status"]
        .as_str()
        .is_some_and(|status| FINAL.contains(&status))
}

/// Waits until every action is final through the api, then until the projector has
/// folded it; returns each action's final view (as the api answers it).
pub async fn settle(
    api: &Api,
    database: &mongodb::Database,
    actions: &[Submitted],
    timeout: Duration,
) -> Result<BTreeMap<String, Value>> {
    let deadline = Instant::now() + timeout;
    let mut views = BTreeMap::new();
    let mut pending: BTreeSet<String> = actions.iter().map(|action| action.id.clone()).collect();
    while !pending.is_empty() && Instant::now() < deadline {
        for id in pending.clone() {
            let Some(view) = api.peek(&format!("/bulk-actions/{id}")).await else {
                continue;
            };
            if is_final(&view) {
                pending.remove(&id);
                views.insert(id, view);
            } else {
                nudge(api, &id, &view).await?;
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    for id in pending {
        let view = api
            .peek(&format!("/bulk-actions/{id}"))
            .await
            .unwrap_or(Value::Null);
        if is_final(&view) {
            views.insert(id, view);
            continue;
        }
        api.tally.violation(
            "not_final",
            &id,
            format!("not final {timeout:?} after the chaos stopped: {view}"),
        );
    }
    for id in views.keys() {
        let left = deadline.saturating_duration_since(Instant::now());
        let projected = projected_final(database, id, left.max(Duration::from_secs(5))).await?;
        if !projected {
            api.tally.violation(
                "view_not_projected",
                id,
                "the projected view never became final",
            );
        }
    }
    Ok(views)
}

/// Takes away what holds an action back on purpose, so the soak ends in bounded time.
async fn nudge(api: &Api, id: &str, view: &Value) -> Result<()> {
    let path = format!("/bulk-actions/{id}");
    if view["status"] == "paused" {
        api.tally.bump("settle nudges", "resumed a paused action");
        api.call("resume", Method::POST, &format!("{path}/resume"), None)
            .await?;
    } else if view["status"] == "scheduled" {
        // A second ahead, not now: a PATCH to "now" is a no-op on today's main (the hostile
        // account reports it as `patch_to_now_ignored`).
        api.tally
            .bump("settle nudges", "moved a schedule to a second from now");
        let soon = Utc::now() + chrono::Duration::seconds(1);
        let soon = soon.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        api.call(
            "patch",
            Method::PATCH,
            &path,
            Some(&json!({ "scheduledFor": soon })),
        )
        .await?;
    } else if !view["pacing"].is_null() {
        api.tally.bump("settle nudges", "removed a pace");
        api.call(
            "patch",
            Method::PATCH,
            &path,
            Some(&json!({ "pacing": null })),
        )
        .await?;
    }
    Ok(())
}

async fn projected_final(
    database: &mongodb::Database,
    id: &str,
    timeout: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let views = database.collection::<mongodb::bson::Document>(infra::mongo::ACTION_VIEWS);
    loop {
        let view = views.find_one(mongodb::bson::doc! { "_id": id }).await?;
        let status = view.as_ref().and_then(|view| view.get_str("status").ok());
        if status.is_some_and(|status| FINAL.contains(&status)) {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every action the api lists for each account against the ledger: one it lists that the
/// soak never got a `202` for was submitted twice (or from nowhere).
pub async fn check_listed(api: &Api, actions: &[Submitted], accounts: &[String]) -> Result<()> {
    for account in accounts {
        let known: BTreeSet<&str> = actions
            .iter()
            .filter(|action| &action.account == account)
            .map(|action| action.id.as_str())
            .collect();
        let mut listed = BTreeSet::new();
        loop {
            let path = format!(
                "/bulk-actions?accountId={account}&limit=100&skip={}",
                listed.len()
            );
            let reply = api.call("list", Method::GET, &path, None).await?;
            let items = reply.body["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                break;
            }
            listed.extend(
                items
                    .iter()
                    .filter_map(|item| item["actionId"].as_str().map(str::to_owned)),
            );
        }
        api.tally
            .add("checked", "actions listed", listed.len() as u64);
        for id in listed.iter().filter(|id| !known.contains(id.as_str())) {
            api.tally.violation(
                "unknown_action",
                format!("{account} {id}"),
                "listed, but no submission of the soak was answered with it",
            );
        }
        for id in known.iter().filter(|id| !listed.contains(**id)) {
            api.tally.violation(
                "action_not_listed",
                format!("{account} {id}"),
                "accepted (202) but not listed",
            );
        }
    }
    Ok(())
}
