use api::ApiConfig;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Submission parses every record into small allocations (a JSON value, its strings, the
/// planned change) and frees them a batch later: mimalloc's per-thread free lists do that
/// measurably faster than glibc's malloc (docs/benchmarks.md, "Custom fields at
/// submission").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
