//! The chaos soak (issue 12): a bounded run of steady, mixed, partly hostile traffic while
//! processes and servers are SIGKILLed at random, then a check of every action, log line
//! and contact. Run it with `scripts/soak.sh` (`--minutes N`, default 10).
//!
//! 1. A deployment as in production: two api instances, three consumers, a projector,
//!    redis-server (AOF) and FerretDB on PostgreSQL, all real processes (`Deployment`).
//! 2. Five well-behaved accounts (`workload`) and one hostile account (`hostile`) submit
//!    until the time is up; the chaos loop (`chaos`) alternates storms and calm windows.
//! 3. Chaos stops with everything up; every action must become final within
//!    `--settle-minutes` (`settle`).
//! 4. Checks: listed actions = accepted ones, counts, every log line once, outcomes
//!    consistent with the contacts' prior state (`checks`), every contact field by field
//!    and the views against a real `projector replay` (`contacts`), the fair-share bound
//!    (`fairness`). The table (`report`) says what was injected and checked; any violation
//!    makes the exit status 1 (2 if the soak itself could not run).

mod api;
mod chaos;
mod checks;
mod contacts;
mod fairness;
mod hostile;
mod model;
mod records;
mod report;
mod settle;
mod workload;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulk_tests::{ApiClient, Deployment, DeploymentOptions};
use clap::Parser;
use tokio::task::JoinSet;

use crate::api::Api;
use crate::chaos::{Chaos, CONSUMERS};
use crate::report::Tally;
use crate::workload::{LargeAction, Shared};

#[derive(Parser, Clone)]
#[command(about = "Chaos soak: mixed and hostile traffic under random SIGKILLs, then a full check")]
struct Args {
    /// How long traffic and chaos run.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// How long every action gets to become final once the chaos has stopped.
    #[arg(long, default_value_t = 10.0)]
    settle_minutes: f64,
    /// The largest action (the others of the few large ones are a quarter and a tenth of
    /// it); default: 20,000 per minute of run, at most 200,000.
    #[arg(long)]
    largest: Option<u32>,
    #[arg(long, default_value_t = 30)]
    storm_secs: u64,
    #[arg(long, default_value_t = 25)]
    calm_secs: u64,
    /// The fair-share bound on a small action's latency in a calm window (see `fairness`).
    #[arg(long, default_value_t = 30)]
    fair_share_secs: u64,
    #[arg(long, default_value_t = 20_261_202)]
    seed: u64,
}

const ACCOUNTS: [&str; 5] = ["acct-1", "acct-2", "acct-3", "acct-4", "acct-5"];
const HOSTILE: &str = "hostile";
const BATCH_SIZE: u32 = 500;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let tally = Arc::new(Tally::default());
    let outcome = run(&args, tally.clone()).await;
    println!("{}", tally.render());
    match outcome {
        Ok(()) if tally.violations().is_empty() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::from(1),
        Err(error) => {
            eprintln!("[soak] could not complete: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args, tally: Arc<Tally>) -> Result<()> {
    let options = DeploymentOptions {
        batch_size: BATCH_SIZE,
        records_per_minute: 100_000_000,
        requests_per_minute: 100_000_000,
        // Ten minutes of consumer debug logs would be gigabytes.
        env: vec![("RUST_LOG", "info".to_owned())],
        ..DeploymentOptions::default()
    };
    let mut deployment = Deployment::start(options, &CONSUMERS).await?;
    let second = deployment.start_another_api().await?;
    eprintln!(
        "[soak] deployment up; logs in {}",
        deployment.logs_dir().display()
    );
    let api = Api::new(clients(&deployment.client, &second)?, tally.clone());
    for account in ACCOUNTS.iter().chain([&HOSTILE]) {
        deployment.key_for(account).await?;
    }
    let database = deployment.client.database.clone();
    let redis_url = deployment.services.redis_url.clone();
    let logs_dir = deployment.logs_dir().to_path_buf();
    let deployment = Arc::new(tokio::sync::Mutex::new(deployment));

    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let shared = Arc::new(Shared {
        api: api.clone(),
        ledger: Mutex::default(),
        stop: Arc::new(AtomicBool::new(false)),
        started,
        duration,
        batch_size: BATCH_SIZE as usize,
    });
    let chaos = tokio::spawn(
        Chaos {
            deployment: deployment.clone(),
            second_api: second,
            tally: tally.clone(),
            storm: Duration::from_secs(args.storm_secs),
            calm: Duration::from_secs(args.calm_secs),
            seed: args.seed,
        }
        .run(shared.stop.clone()),
    );
    let drivers = spawn_drivers(args, &shared);
    tokio::time::sleep(duration).await;
    shared.stop.store(true, Ordering::Relaxed);
    eprintln!(
        "[soak] {:.0}s: traffic and chaos stop",
        started.elapsed().as_secs_f64()
    );
    let calm = chaos.await??;
    drivers
        .join_all()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    tally.add(
        "timing (s)",
        "traffic and chaos",
        started.elapsed().as_secs(),
    );

    let settling = Instant::now();
    let actions = shared.ledger.lock().ok().context("ledger")?.actions.clone();
    let settle_for = Duration::from_secs_f64(args.settle_minutes * 60.0);
    let views = settle::settle(&api, &database, &actions, settle_for).await?;
    tally.add("timing (s)", "settling", settling.elapsed().as_secs());

    let checking = Instant::now();
    let accounts: Vec<String> = ACCOUNTS
        .iter()
        .chain([&HOSTILE])
        .map(|a| a.to_string())
        .collect();
    settle::check_listed(&api, &actions, &accounts).await?;
    let expected = checks::check_actions(&api, &actions, &views).await?;
    checks::check_dead_letters(&tally, &redis_url, &views).await?;
    contacts::check_contacts(&tally, &database, &expected, &accounts).await?;
    let bound = Duration::from_secs(args.fair_share_secs);
    fairness::check_fairness(&tally, &actions, &views, &calm, bound);
    contacts::check_replay(&tally, &mut *deployment.lock().await).await?;
    tally.add("timing (s)", "checking", checking.elapsed().as_secs());
    if !tally.violations().is_empty() {
        // Keep the processes' logs and data for the reproduction.
        std::env::set_var("KEEP_TEST_DIRS", "1");
        eprintln!(
            "[soak] violations found; logs kept in {}",
            logs_dir.display()
        );
    }
    Ok(())
}

/// Clients of both api instances (sharing API keys) with timeouts: a request to a killed
/// process must fail fast and be retried, not hang.
fn clients(first: &ApiClient, second: &ApiClient) -> Result<Vec<ApiClient>> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .build()?;
    Ok([first, second]
        .into_iter()
        .map(|client| {
            let mut client = client.clone();
            client.http = http.clone();
            client
        })
        .collect())
}

/// One driver per account; the few large actions go to the first three, at set points.
fn spawn_drivers(args: &Args, shared: &Arc<Shared>) -> JoinSet<Result<()>> {
    let largest = args
        .largest
        .unwrap_or_else(|| ((args.minutes * 20_000.0) as u32).clamp(2_000, 200_000));
    let large: [Vec<LargeAction>; 3] = [
        vec![(0.2, largest)],
        vec![(0.45, largest / 4)],
        vec![(0.7, largest / 10)],
    ];
    let mut drivers = JoinSet::new();
    for (n, account) in ACCOUNTS.iter().enumerate() {
        let own = large.get(n).cloned().unwrap_or_default();
        let seed = args.seed.wrapping_add(n as u64);
        drivers.spawn(workload::run_account(
            shared.clone(),
            account.to_string(),
            seed,
            own,
        ));
    }
    drivers.spawn(hostile::run_hostile(
        shared.clone(),
        HOSTILE.to_owned(),
        args.seed ^ 0xBAD,
    ));
    drivers
}
