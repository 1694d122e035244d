//! One module per command; each takes its clap arguments and the shared [`Context`] and
//! says how the command ended.

pub mod control;
pub mod list;
pub mod results;
pub mod retry;
pub mod status;
pub mod submit;
pub mod watch;

use std::str::FromStr;

use serde_json::json;

use crate::client::Client;
use crate::error::CliError;
use crate::follow::{follow, Ended};
use crate::output::{stats_details, Output};
use crate::progress::{Progress, Style};

pub struct Context {
    pub client: Client,
    pub output: Output,
    pub style: Style,
}

/// How a command ended, beyond "it worked" or an error: the exit codes scripts switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The action finished with more failed records than `--max-failures` (exit 1).
    TooManyFailures,
    /// The action was cancelled (exit 3).
    Cancelled,
    /// Ctrl-C while waiting: the action goes on (exit 130, as a shell reports SIGINT).
    Interrupted,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// Failed records the action may end with and still count as a success (exit 0).
    #[arg(long, default_value_t = 0)]
    pub max_failures: u64,
}

/// Follows `action_id` to its end on stderr, then prints its statistics. Ctrl-C stops
/// following, never the action.
pub async fn wait_for(
    context: &Context,
    action_id: &str,
    wait: &WaitArgs,
    progress: &mut Progress,
) -> Result<Outcome, CliError> {
    let ended = tokio::select! {
        ended = follow(&context.client, action_id, progress) => ended?,
        _ = tokio::signal::ctrl_c() => {
            progress.clear();
            eprintln!(
                "interrupted: action {action_id} keeps running; follow it with `bulk watch {action_id}` (stop it with `bulk cancel {action_id}`)"
            );
            context.output.show(&json!({"actionId": action_id, "interrupted": true}), String::new);
            return Ok(Outcome::Interrupted);
        }
    };
    Ok(report_end(context, &ended, wait))
}

fn report_end(context: &Context, ended: &Ended, wait: &WaitArgs) -> Outcome {
    context
        .output
        .show(&ended.raw, || stats_details(&ended.stats));
    let stats = &ended.stats;
    if stats.status == "cancelled" {
        return Outcome::Cancelled;
    }
    // `failed` is the platform's verdict that nothing was applied (every batch
    // dead-lettered): never a success, whatever the allowance.
    if stats.failed > wait.max_failures || stats.status == "failed" {
        if stats.failed > wait.max_failures {
            eprintln!(
                "{} records failed (allowed: {}); `bulk results {} --status failed -o failed.csv` lists them",
                stats.failed, wait.max_failures, stats.action_id
            );
        }
        return Outcome::TooManyFailures;
    }
    Outcome::Done
}

/// `--pace N/S`: at most N records every S seconds, the API's `pacing` of
/// `{batchSize: N, intervalSeconds: S}` (whole numbers, as the API takes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub batch_size: u32,
    pub interval_seconds: u32,
}

impl FromStr for Pace {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let wrong = || format!("{raw:?}: expected N/S, N records every S seconds (e.g. 500/60)");
        let (records, seconds) = raw.split_once('/').ok_or_else(wrong)?;
        let seconds = seconds.trim().trim_end_matches('s');
        let batch_size: u32 = records.trim().parse().map_err(|_| wrong())?;
        let interval_seconds: u32 = seconds.parse().map_err(|_| wrong())?;
        if batch_size == 0 || interval_seconds == 0 {
            return Err(format!("{raw:?}: both numbers must be at least 1"));
        }
        Ok(Self {
            batch_size,
            interval_seconds,
        })
    }
}

impl Pace {
    pub fn to_json(self) -> serde_json::Value {
        json!({"batchSize": self.batch_size, "intervalSeconds": self.interval_seconds})
    }
}

/// An action id as typed: only letters and digits (a ULID) may go into a URL path, so a
/// stray `/` or `?` cannot turn a `status` into a request for another route.
pub fn action_id(raw: &str) -> Result<&str, CliError> {
    let id = raw.trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(CliError::Usage(format!(
            "{raw:?} is not an action id (a ULID such as 01KB7Y3ZQ8V9X2M4N6P8R0T2W4)"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_is_records_per_seconds() {
        assert_eq!(
            "500/60".parse(),
            Ok(Pace {
                batch_size: 500,
                interval_seconds: 60
            })
        );
        assert_eq!(
            "2/5s".parse::<Pace>().map(Pace::to_json),
            Ok(json!({"batchSize": 2, "intervalSeconds": 5}))
        );
        for wrong in ["500", "0/5", "5/0", "a/b", "1.5/2", "-1/3", ""] {
            assert!(wrong.parse::<Pace>().is_err(), "{wrong}");
        }
    }

    fn ended(status: &str, failed: u64) -> Ended {
        let stats = crate::model::Stats {
            action_id: "A".into(),
            status: status.into(),
            failed,
            ..Default::default()
        };
        Ended {
            raw: json!({}),
            stats,
        }
    }

    #[test]
    fn the_outcome_follows_the_status_and_the_allowance() {
        let context = Context {
            client: Client::new("http://127.0.0.1:1", "k").expect("client"),
            output: Output {
                format: crate::output::Format::Json,
            },
            style: Style::Lines,
        };
        let none = WaitArgs { max_failures: 0 };
        let some = WaitArgs { max_failures: 5 };
        assert_eq!(
            report_end(&context, &ended("completed", 0), &none),
            Outcome::Done
        );
        assert_eq!(
            report_end(&context, &ended("completed", 1), &none),
            Outcome::TooManyFailures
        );
        assert_eq!(
            report_end(&context, &ended("completed", 5), &some),
            Outcome::Done
        );
        assert_eq!(
            report_end(&context, &ended("failed", 5), &some),
            Outcome::TooManyFailures
        );
        assert_eq!(
            report_end(&context, &ended("cancelled", 9), &none),
            Outcome::Cancelled
        );
    }

    #[test]
    fn an_action_id_cannot_reach_another_route() {
        assert_eq!(action_id(" 01KB7Y3ZQ8 ").ok(), Some("01KB7Y3ZQ8"));
        for wrong in ["", "../admin", "a?b", "a/b", "a b"] {
            assert!(action_id(wrong).is_err(), "{wrong}");
        }
    }
}
