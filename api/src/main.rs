use api::ApiConfig;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Submission parses every record into small allocations (a JSON value, its strings, the
/// planned change) and frees them a batch later: mimalloc's per-thread free lists do that
/// measurably faster than glibc's malloc (docs/benchmarks.md, "Custom fields at
/// submission").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay`, which `libmimalloc-sys` names no constant for;
/// the test below fails if a new version moves it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system at once instead of after a second: the api's
/// peak while accepting a million records drops from 118-135 MiB to about 100, at no
/// measurable cost (decision 0052). `MIMALLOC_PURGE_DELAY` cannot do it from here: it is
/// read at the first allocation, before `main`.
fn return_freed_memory_at_once() {
    // SAFETY: sets a plain option; mimalloc allows changing it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// HTTP api of the CRM bulk action platform.
#[derive(Debug, Parser)]
#[command(name = "api", version)]
struct Cli {
    #[command(flatten)]
    config: ApiConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    return_freed_memory_at_once();
    infra::config::load_dotenv();
    infra::telemetry::init("api");
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(infra::shutdown::on_signal(shutdown.clone()));
    api::run(cli.config, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // Its documented default, which no neighbouring option shares (eager commit
        // delay 1, NUMA nodes 0).
        // SAFETY: reads a plain option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000);
        return_freed_memory_at_once();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            0
        );
    }
}
