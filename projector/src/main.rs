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
            println!("replayed {} actions", report.actions);
        }
    }
    Ok(())
}
