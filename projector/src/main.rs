use clap::{Parser, Subcommand};
use projector::ProjectorConfig;
use tokio_util::sync::CancellationToken;

/// Folds bulk action events into MongoDB views.
#[derive(Debug, Parser)]
#[command(name = "projector", version)]
struct Cli {
    #[command(flatten)]
    config: ProjectorConfig,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Follow the event feeds and keep the views up to date (the default).
    Run,
    /// Drop the views, rebuild them from the event streams, and exit.
    Replay,
    /// List the quarantined actions (views the store refuses) with the reason, and exit.
    Quarantined,
    /// Move the events of actions finished more than `days` days ago to the MongoDB event
    /// archive once, and exit (what `EVENT_RETENTION_DAYS` does hourly).
    Archive {
        #[arg(long)]
        older_than_days: u32,
    },
    /// On a drained deployment, move every key from STREAM_PARTITIONS partitions to `to`
    /// partitions, and exit; then start everything with STREAM_PARTITIONS=`to`.
    Repartition {
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        to: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::config::load_dotenv();
    infra::telemetry::init("projector");
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let shutdown = CancellationToken::new();
            tokio::spawn(infra::shutdown::on_signal(shutdown.clone()));
            projector::run(cli.config, shutdown).await?;
        }
        Command::Replay => {
            let report = projector::replay(&cli.config).await?;
            println!(
                "replayed {} actions, {} quarantined",
                report.actions, report.quarantined
            );
        }
        Command::Quarantined => {
            for (action, error) in projector::quarantined(&cli.config).await? {
                println!("{action}\t{}", serde_json::to_string(&error)?);
            }
        }
        Command::Repartition { to } => {
            let report = projector::repartition(&cli.config, to).await?;
            println!(
                "moved {} keys of {} actions to {to} partitions",
                report.keys_moved, report.actions
            );
        }
        Command::Archive { older_than_days } => {
            let report = projector::archive(&cli.config, older_than_days).await?;
            println!(
                "archived {} events of {} actions",
                report.events, report.actions
            );
        }
    }
    Ok(())
}
