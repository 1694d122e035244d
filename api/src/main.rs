use api::ApiConfig;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// HTTP api of the CRM bulk action platform.
#[derive(Debug, Parser)]
#[command(name = "api", version)]
struct Cli {
    #[command(flatten)]
    config: ApiConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::config::load_dotenv();
    infra::telemetry::init("api");
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(infra::shutdown::on_signal(shutdown.clone()));
    api::run(cli.config, shutdown).await?;
    Ok(())
}
