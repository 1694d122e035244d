use clap::Parser;
use consumer::ConsumerConfig;
use tokio_util::sync::CancellationToken;

/// Applies bulk action batches to MongoDB contacts.
#[derive(Debug, Parser)]
#[command(name = "consumer", version)]
struct Cli {
    #[command(flatten)]
    config: ConsumerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::config::load_dotenv();
    infra::telemetry::init("consumer");
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(infra::shutdown::on_signal(shutdown.clone()));
    consumer::run(cli.config, shutdown).await?;
    Ok(())
}
