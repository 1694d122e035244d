//! No account's small action waits longer than its fair share.
//!
//! The bound: a small action (at most one batch) of a well-behaved account, with nothing
//! delaying it on purpose (no schedule, pace, pause, cancel or PATCH), submitted in a calm
//! window (every process up and recovered), must be completed within `bound` of its
//! creation (`completedAt - createdAt`, both the server's); it is judged when it completed
//! or the bound ran out before the window ended.
//! Dispatch is round-robin across accounts and keeps at most one batch per live worker
//! (plus one) in the work stream, so such an action waits behind at most that many batches
//! of other accounts, however large their actions: on this machine with FerretDB a batch
//! takes up to a few seconds, hence the default bound of 30 s (`--fair-share-secs`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::chaos::CalmWindow;
use crate::model::Submitted;
use crate::report::{percentile, Tally};

pub fn check_fairness(
    tally: &Tally,
    actions: &[Submitted],
    views: &BTreeMap<String, Value>,
    calm: &[CalmWindow],
    bound: Duration,
) {
    let bound_ms = bound.as_millis() as i64;
    let mut latencies: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for action in actions.iter().filter(|action| action.fairness_candidate) {
        let Some(view) = views.get(&action.id) else {
            continue;
        };
        if view["status"] != "completed" {
            continue;
        }
        let (Some(created), Some(completed)) =
            (time(&view["createdAt"]), time(&view["completedAt"]))
        else {
            continue;
        };
        // Judged only if all that is judged happened in one calm window: created in it, and
        // either completed in it or the bound ran out in it (windows may be shorter than
        // the bound).
        let bound_end = created + chrono::Duration::milliseconds(bound_ms);
        let in_calm = calm
            .iter()
            .any(|window| created >= window.from && completed.min(bound_end) <= window.to);
        if !in_calm {
            continue;
        }
        let waited = (completed - created).num_milliseconds().max(0);
        latencies
            .entry(action.account.as_str())
            .or_default()
            .push(waited as u64);
        if waited > bound_ms {
            tally.violation(
                "fair_share_exceeded",
                format!("{} {}", action.account, action.id),
                format!("{} records completed {waited} ms after creation (bound {bound_ms} ms, chaos off)", action.records.len()),
            );
        }
    }
    for (account, mut waits) in latencies {
        waits.sort_unstable();
        tally.add(
            "small actions in calm windows (ms)",
            format!("{account}: count"),
            waits.len() as u64,
        );
        for (label, p) in [("p50", 50), ("p95", 95), ("max", 100)] {
            tally.add(
                "small actions in calm windows (ms)",
                format!("{account}: {label}"),
                percentile(&waits, p),
            );
        }
    }
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|raw| DateTime::parse_from_rfc3339(raw).ok())
        .map(|at| at.with_timezone(&Utc))
}
