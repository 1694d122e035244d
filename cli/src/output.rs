//! Data on stdout: the API's JSON as it answered with `--json`, a human summary otherwise.

use serde_json::Value;

use crate::model::{Stats, View};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub format: Format,
}

impl Output {
    pub fn show(&self, json: &Value, human: impl FnOnce() -> String) {
        match self.format {
            Format::Json => println!("{json}"),
            Format::Human => {
                let text = human();
                if !text.is_empty() {
                    println!("{text}");
                }
            }
        }
    }
}

pub fn view_line(view: &View) -> String {
    let counts = &view.counts;
    format!(
        "{} {} {} {} {}/{} ok {} failed {} skipped {} unprocessed {}",
        counts.action_id,
        counts.status,
        view.action_type,
        view.entity_type,
        counts.processed_records,
        counts.total_records,
        counts.succeeded,
        counts.failed,
        counts.skipped,
        counts.unprocessed
    )
}

pub fn view_details(view: &View) -> String {
    let counts = &view.counts;
    let mut lines = vec![
        format!("action     {}", counts.action_id),
        format!("status     {}", counts.status),
        format!("type       {} {}", view.action_type, view.entity_type),
        format!(
            "records    {}/{} processed: {} succeeded, {} failed, {} skipped, {} unprocessed",
            counts.processed_records,
            counts.total_records,
            counts.succeeded,
            counts.failed,
            counts.skipped,
            counts.unprocessed
        ),
        format!("created    {}", view.created_at),
    ];
    let times = [
        ("scheduled", &view.scheduled_for),
        ("started", &view.started_at),
        ("finished", &view.completed_at),
        ("retry of", &view.retry_of),
    ];
    for (label, value) in times {
        if let Some(value) = value {
            lines.push(format!("{label:<10} {value}"));
        }
    }
    lines.extend(reasons(&view.by_reason));
    lines.join("\n")
}

pub fn stats_details(stats: &Stats) -> String {
    let mut lines = vec![format!(
        "action {} {}: {} records, {} succeeded, {} failed, {} skipped, {} unprocessed",
        stats.action_id,
        stats.status,
        stats.total,
        stats.succeeded,
        stats.failed,
        stats.skipped,
        stats.unprocessed
    )];
    if let (Some(ms), Some(rate)) = (stats.duration_ms, stats.records_per_second) {
        lines.push(format!(
            "took {:.1} s, {rate:.0} records/s",
            ms as f64 / 1000.0
        ));
    }
    lines.extend(reasons(&stats.by_reason));
    lines.join("\n")
}

fn reasons(by_reason: &std::collections::BTreeMap<String, u64>) -> Vec<String> {
    if by_reason.is_empty() {
        return Vec::new();
    }
    let mut lines = vec!["by reason:".to_owned()];
    lines.extend(
        by_reason
            .iter()
            .map(|(code, count)| format!("  {code:<24} {count}")),
    );
    lines
}
