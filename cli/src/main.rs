//! `bulk`: submit, follow and steer bulk actions from a terminal or a script, through the
//! platform's public HTTP API only (no Redis, no MongoDB, no shared crate).
//!
//! Progress goes to stderr, data to stdout (`--json`: the API's JSON). Exit codes: 0
//! success, 1 finished with more failed records than `--max-failures`, 2 usage or API
//! error, 3 cancelled, 130 interrupted while waiting (the action keeps running).

mod client;
mod commands;
mod error;
mod follow;
mod model;
mod output;
mod progress;
mod sse;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::client::Client;
use crate::commands::control::{Control, ControlArgs};
use crate::commands::{Context, Outcome};
use crate::error::CliError;
use crate::output::{Format, Output};
use crate::progress::{Quiet, Style};

#[derive(Parser, Debug)]
#[command(
    name = "bulk",
    version,
    about = "Bulk actions on CRM records, from the command line"
)]
struct Cli {
    /// The API's base URL.
    #[arg(
        long,
        env = "BULK_API_URL",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    api_url: String,
    /// An API key of the account (`Authorization: Bearer`).
    #[arg(long, env = "BULK_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Print the API's JSON on stdout, one document per command, for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars: plain progress lines on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upload a CSV, NDJSON or JSON file as a new bulk action.
    Submit(commands::submit::SubmitArgs),
    /// Follow an action to its end with a progress bar.
    Watch(commands::watch::WatchArgs),
    /// Show an action.
    Status(commands::status::StatusArgs),
    /// List the account's actions, newest first.
    List(commands::list::ListArgs),
    /// Download a result file (the failed records by default).
    Results(commands::results::ResultsArgs),
    /// Retry the records that failed or never ran, as a new action.
    Retry(commands::retry::RetryArgs),
    /// Stop an action: records not yet applied end unprocessed.
    Cancel(ControlArgs),
    /// Hold an action where it is.
    Pause(ControlArgs),
    /// Go on with a paused action.
    Resume(ControlArgs),
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error and 0 for --help, as the exit codes promise.
    let cli = Cli::parse();
    let output = Output {
        format: if cli.json {
            Format::Json
        } else {
            Format::Human
        },
    };
    match run(cli, output) {
        Ok(outcome) => exit_code(outcome),
        Err(error) => {
            match error.downcast_ref::<CliError>() {
                Some(cli_error) => {
                    if output.format == Format::Json {
                        println!("{}", cli_error.to_json());
                    }
                    eprintln!("error: {cli_error}");
                }
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli, output: Output) -> anyhow::Result<Outcome> {
    let key = cli
        .api_key
        .as_deref()
        .ok_or_else(|| CliError::Usage("no API key: set BULK_API_KEY or give --api-key".into()))?;
    let context = Context {
        client: Client::new(&cli.api_url, key)?,
        output,
        style: Style::detect(if cli.quiet { Quiet::Yes } else { Quiet::No }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async {
        match &cli.command {
            Command::Submit(args) => commands::submit::run(&context, args).await,
            Command::Watch(args) => commands::watch::run(&context, args).await,
            Command::Status(args) => commands::status::run(&context, args).await,
            Command::List(args) => commands::list::run(&context, args).await,
            Command::Results(args) => commands::results::run(&context, args).await,
            Command::Retry(args) => commands::retry::run(&context, args).await,
            Command::Cancel(args) => commands::control::run(&context, Control::Cancel, args).await,
            Command::Pause(args) => commands::control::run(&context, Control::Pause, args).await,
            Command::Resume(args) => commands::control::run(&context, Control::Resume, args).await,
        }
    })?;
    Ok(outcome)
}

fn exit_code(outcome: Outcome) -> ExitCode {
    ExitCode::from(match outcome {
        Outcome::Done => 0,
        Outcome::TooManyFailures => 1,
        Outcome::Cancelled => 3,
        Outcome::Interrupted => 130,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_where_the_readme_puts_them() {
        let cli = Cli::try_parse_from([
            "bulk",
            "submit",
            "c.csv",
            "--action",
            "upsert",
            "--pace",
            "10/2",
            "--wait",
            "--max-failures",
            "3",
            "--json",
        ])
        .expect("parses");
        assert!(cli.json);
        match cli.command {
            Command::Submit(args) => {
                assert_eq!(args.limits.max_failures, 3);
                assert_eq!(args.pace.map(|p| p.batch_size), Some(10));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["bulk", "submit", "c.csv", "--action", "merge"]).is_err());
    }
}
