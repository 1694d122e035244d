//! The benchmark suite: end-to-end throughput against the raw store limit, peak memory of
//! every process, and request latency under load. Run it with `scripts/bench.sh`, which
//! installs what is missing and builds the release binaries this drives.
//!
//! For each record count: a fresh deployment (redis-server, PostgreSQL + FerretDB, and the
//! api, consumer and projector binaries as processes), then
//! 1. a generated NDJSON file (see `data`);
//! 2. end to end: the file streamed to `POST /bulk-actions` as an upsert of new contacts,
//!    timed until `GET /bulk-actions/{id}` says `completed`;
//! 3. the raw store limit: the same kept records inserted straight into a fresh collection
//!    with the same unique index, at several batches in flight (the best counts);
//! 4. the peak RSS of each process.
//!
//! Then, once, `wrk` posts 10,000-record JSON actions while another `wrk` reads a view;
//! and, on another fresh deployment, an `update` of seeded contacts is timed against raw
//! update commands (`--update-records`).

mod cpu;
mod data;
mod load;
mod raw;
mod subscribers;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulk_tests::{Deployment, DeploymentOptions};
use clap::Parser;
use futures::TryStreamExt;
use serde_json::{json, Value};

use data::Dataset;

#[derive(Parser)]
#[command(about = "End-to-end throughput vs the raw store limit, memory, and latency")]
struct Args {
    /// Record counts to run, each on a fresh deployment.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    records: Vec<u64>,
    /// Consumer processes.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Workers per consumer process (the production default).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    batch_size: u32,
    /// Batches in flight tried for the raw store limit.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    raw_in_flight: Vec<usize>,
    /// Records of the `update` run (contacts seeded first; 0 skips it). Small: on FerretDB
    /// every update statement by email scans the collection.
    #[arg(long, default_value_t = 10_000)]
    update_records: u64,
    /// Seconds of the latency run; 0 skips it.
    #[arg(long, default_value_t = 15)]
    load_seconds: u64,
    #[arg(long, default_value_t = 20_261_129)]
    seed: u64,
    /// Custom fields the bench account defines (0: none), checked at submission.
    #[arg(long, default_value_t = 0)]
    custom_fields: usize,
    /// How many of the custom fields each new contact carries a value for (the last ones
    /// of the definition, so that a lookup walks past the others); 0 measures what the
    /// definition alone costs.
    #[arg(long, default_value_t = 10)]
    custom_values: usize,
    /// Live progress streams opened on the action right after it is accepted, each read to
    /// its final message (0: none).
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if std::env::var_os("BULK_BINARIES_DIR").is_none() {
        bail!(
            "BULK_BINARIES_DIR is not set: run scripts/bench.sh, which builds the release binaries"
        );
    }
    let mut results = Vec::new();
    for (position, &records) in args.records.iter().enumerate() {
        let run_load = position == 0 && args.load_seconds > 0;
        let result = run(&args, records, run_load).await?;
        println!("{}", serde_json::to_string(&result)?);
        results.push(result);
    }
    let update = if args.update_records > 0 {
        let update = run_update(&args, args.update_records).await?;
        println!("{}", serde_json::to_string(&update)?);
        Some(update)
    } else {
        None
    };
    print_summary(&args, &results, update.as_ref());
    Ok(())
}

async fn start(args: &Args, records: u64) -> Result<Deployment> {
    let consumers: Vec<String> = (1..=args.consumers).map(|n| format!("c{n}")).collect();
    let names: Vec<&str> = consumers.iter().map(String::as_str).collect();
    let options = DeploymentOptions {
        batch_size: args.batch_size,
        consumer_concurrency: args.concurrency,
        records_per_minute: 1_000_000_000,
        requests_per_minute: 1_000_000_000,
        env: vec![
            ("RUST_LOG", "warn".to_owned()),
            // Past the default million, for runs that show memory does not grow with size.
            ("MAX_RECORDS_PER_ACTION", records.max(1_000_000).to_string()),
            (
                "SSE_MAX_STREAMS_PER_ACCOUNT",
                (args.subscribers + 10).to_string(),
            ),
        ],
        ..DeploymentOptions::default()
    };
    Deployment::start(options, &names).await
}

/// The run's generated records as an NDJSON file in `dir`; also how many will be kept.
fn write_records(
    args: &Args,
    dir: &Path,
    name: &str,
    records: u64,
) -> Result<(Dataset, std::path::PathBuf, u64)> {
    let data = Dataset {
        seed: args.seed,
        records,
        custom_fields: args.custom_fields,
        custom_values: args.custom_values,
    };
    let file = dir.join(format!("{name}-{records}.ndjson"));
    let kept = data.write_ndjson(std::fs::File::create(&file)?)?;
    Ok((data, file, kept))
}

/// `update` of seeded contacts: end to end against raw update statements by email.
async fn run_update(args: &Args, records: u64) -> Result<Value> {
    let deployment = start(args, records).await?;
    let dir = deployment.services.dir().to_path_buf();
    let (data, file, kept) = write_records(args, &dir, "update", records)?;
    let database = infra::mongo::connect(&deployment.services.mongodb_uri, "bench").await?;
    raw::seed(&database, infra::mongo::CONTACTS, &data, "bench").await?;
    eprintln!("[bench] update: {records} records, {kept} seeded contacts to change");
    let (_, accepted, completed, view, _) = end_to_end(&deployment, &file, "update", 0).await?;
    if view["succeeded"].as_u64() != Some(kept) {
        bail!("expected {kept} contacts updated, the view says {view}");
    }
    let e2e_rate = kept as f64 / completed.as_secs_f64();
    eprintln!("[bench] update end to end: accepted in {accepted:?}, completed in {completed:?} ({e2e_rate:.0}/s)");
    let mut raw_runs = Vec::new();
    for &in_flight in &args.raw_in_flight {
        let collection = format!("raw_update_{in_flight}");
        raw::fresh_collection(&database, &collection).await?;
        raw::seed(&database, &collection, &data, "raw").await?;
        let (matched, took) = raw::update_all(
            &database,
            &collection,
            &data,
            "raw",
            args.batch_size as usize,
            in_flight,
        )
        .await?;
        if matched != kept {
            bail!("raw update matched {matched} of {kept}");
        }
        let rate = matched as f64 / took.as_secs_f64();
        eprintln!("[bench] raw update, {in_flight} in flight: {matched} in {took:?} ({rate:.0}/s)");
        raw_runs.push(json!({"inFlight": in_flight, "records": matched, "seconds": took.as_secs_f64(), "perSecond": rate}));
    }
    let raw_best = raw_runs
        .iter()
        .filter_map(|run| run["perSecond"].as_f64())
        .fold(0.0, f64::max);
    Ok(json!({
        "action": "update",
        "records": records,
        "kept": kept,
        "acceptedSeconds": accepted.as_secs_f64(),
        "completedSeconds": completed.as_secs_f64(),
        "endToEndPerSecond": e2e_rate,
        "raw": raw_runs,
        "rawBestPerSecond": raw_best,
        "ratio": e2e_rate / raw_best,
    }))
}

async fn run(args: &Args, records: u64, run_load: bool) -> Result<Value> {
    let deployment = start(args, records).await?;
    let dir = deployment.services.dir().to_path_buf();
    let (data, file, kept) = write_records(args, &dir, "records", records)?;
    let bytes = std::fs::metadata(&file)?.len();
    eprintln!("[bench] {records} records ({bytes} bytes), {kept} to keep");

    let cpu_before = cpu::by_command();
    if args.custom_fields > 0 {
        let key = deployment.key_for("bench").await?;
        let auth = format!("Bearer {key}");
        let put = deployment
            .send(
                reqwest::Method::PUT,
                "/fields/contact",
                Some(&data::definition(args.custom_fields)),
                &[("authorization", auth.as_str())],
            )
            .await?;
        if put.status != 200 {
            bail!(
                "the custom fields were refused: {} {}",
                put.status,
                put.body
            );
        }
    }
    let (action, accepted, completed, view, live) =
        end_to_end(&deployment, &file, "upsert", args.subscribers).await?;
    if let Some(live) = &live {
        eprintln!("[bench] live progress subscribers: {live}");
    }
    let e2e_cpu = cpu::used(&cpu_before, &cpu::by_command());
    eprintln!("[bench] end-to-end CPU seconds by command: {e2e_cpu:?}");
    if view["succeeded"].as_u64() != Some(kept) {
        bail!("expected {kept} contacts written, the view says {view}");
    }
    let e2e_rate = kept as f64 / completed.as_secs_f64();
    // When the last batch settled, by the consumer's clock; the rest of `completed` is the
    // projector catching up.
    let settled_ms = match (
        view["createdAt"]
            .as_str()
            .and_then(domain::Timestamp::parse_rfc3339),
        view["completedAt"]
            .as_str()
            .and_then(domain::Timestamp::parse_rfc3339),
    ) {
        (Some(created), Some(done)) => done.millis_since(created),
        _ => -1,
    };
    eprintln!("[bench] created -> Completed event: {settled_ms} ms");
    let peaks = deployment.peak_rss_kib();
    eprintln!("[bench] end to end: accepted in {accepted:?}, completed in {completed:?} ({e2e_rate:.0}/s); peak RSS {peaks:?}");
    eprintln!(
        "[bench] submission: {:.0} records/s, {:.1} MB/s ({} custom fields defined, {} carried)",
        records as f64 / accepted.as_secs_f64(),
        bytes as f64 / 1e6 / accepted.as_secs_f64(),
        args.custom_fields,
        args.custom_fields.min(args.custom_values)
    );

    let database = infra::mongo::connect(&deployment.services.mongodb_uri, "bench").await?;
    let mut raw_runs = Vec::new();
    for &in_flight in &args.raw_in_flight {
        let collection = format!("raw_{in_flight}");
        let raw_db = database.clone();
        let cpu_before = cpu::by_command();
        let (written, took) = raw::insert_all(
            &raw_db,
            &data,
            &collection,
            args.batch_size as usize,
            in_flight,
        )
        .await?;
        let rate = written as f64 / took.as_secs_f64();
        let raw_cpu = cpu::used(&cpu_before, &cpu::by_command());
        eprintln!("[bench] raw, {in_flight} in flight: {written} in {took:?} ({rate:.0}/s); CPU seconds {raw_cpu:?}");
        raw_runs.push(json!({"inFlight": in_flight, "records": written, "seconds": took.as_secs_f64(), "perSecond": rate}));
    }
    let raw_best = raw_runs
        .iter()
        .filter_map(|run| run["perSecond"].as_f64())
        .fold(0.0, f64::max);

    let latency = if run_load {
        Some(latency_under_load(&deployment, &action, args.load_seconds, &dir).await?)
    } else {
        None
    };
    Ok(json!({
        "records": records,
        "bodyBytes": bytes,
        "kept": kept,
        "acceptedSeconds": accepted.as_secs_f64(),
        "completedSeconds": completed.as_secs_f64(),
        "createdToCompletedEventMs": settled_ms,
        "endToEndCpuSeconds": e2e_cpu.iter().map(|(command, seconds)| json!({"command": command, "seconds": seconds})).collect::<Vec<_>>(),
        "endToEndPerSecond": e2e_rate,
        "raw": raw_runs,
        "rawBestPerSecond": raw_best,
        "ratio": e2e_rate / raw_best,
        "peakRssMiB": peaks.iter().map(|(role, kib)| json!({"process": role, "mib": *kib as f64 / 1024.0})).collect::<Vec<_>>(),
        "latency": latency,
        "liveSubscribers": live,
    }))
}

/// Streams the file as an action of `action_type`; returns the action, time to `202`, time to `completed`
/// (both from the first byte sent) and the final view.
async fn end_to_end(
    deployment: &Deployment,
    file: &Path,
    action_type: &str,
    subscribers: usize,
) -> Result<(String, Duration, Duration, Value, Option<Value>)> {
    let body = tokio::fs::File::open(file).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(body, 256 * 1024);
    let started = Instant::now();
    let reply = deployment
        .upload(
            &format!("/bulk-actions?accountId=bench&entityType=contact&actionType={action_type}"),
            "application/x-ndjson",
            reqwest::Body::wrap_stream(stream),
            &[],
        )
        .await?;
    let accepted = started.elapsed();
    if reply.status != 202 {
        bail!("upload refused: {} {}", reply.status, reply.body);
    }
    let action = reply.body["actionId"]
        .as_str()
        .context("no actionId")?
        .to_owned();
    let streams = if subscribers > 0 {
        Some(subscribers::subscribe(deployment, &action, subscribers).await?)
    } else {
        None
    };
    loop {
        let (status, view) = deployment
            .get_json(&format!("/bulk-actions/{action}"))
            .await?;
        if status == 200 && view["status"] == "completed" {
            let completed = started.elapsed();
            let live = match streams {
                Some(streams) => Some(subscribers::summary(streams, subscribers).await?),
                None => None,
            };
            return Ok((action, accepted, completed, view, live));
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("not completed within an hour: {view}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn latency_under_load(
    deployment: &Deployment,
    action: &str,
    seconds: u64,
    dir: &Path,
) -> Result<Value> {
    let key = deployment.key_for("load").await?;
    let records: Vec<Value> = (0..10_000)
        .map(|i| json!({"email": format!("load{i}@example.com"), "name": format!("Load {i}"), "age": 30}))
        .collect();
    let body = dir.join("post-10k.json");
    std::fs::write(
        &body,
        serde_json::to_vec(
            &json!({"entityType": "contact", "actionType": "upsert", "data": records}),
        )?,
    )?;
    let bench_key = deployment.key_for("bench").await?;
    let duration = Duration::from_secs(seconds);
    let posts = load::Load {
        url: deployment.url("/bulk-actions"),
        api_key: &key,
        connections: 2,
        duration,
        post_body: Some(&body),
        scratch: dir,
    };
    let gets = load::Load {
        url: deployment.url(&format!("/bulk-actions/{action}")),
        api_key: &bench_key,
        connections: 8,
        duration,
        post_body: None,
        scratch: dir,
    };
    let (post, get) = tokio::try_join!(posts.run(), gets.run())?;
    let accepted = deployment
        .database
        .collection::<mongodb::bson::Document>(infra::mongo::ACTION_VIEWS)
        .find(mongodb::bson::doc! {"accountId": "load"})
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .len();
    eprintln!(
        "[bench] POST 10k: {post:?}; GET view: {get:?}; {accepted} load actions projected so far"
    );
    Ok(json!({
        "post10k": {"requests": post.requests, "perSecond": post.per_second, "p50Ms": post.p50_ms, "p99Ms": post.p99_ms, "non2xx": post.non_2xx, "connections": 2},
        "getView": {"requests": get.requests, "perSecond": get.per_second, "p50Ms": get.p50_ms, "p99Ms": get.p99_ms, "non2xx": get.non_2xx, "connections": 8},
        "seconds": seconds,
    }))
}

fn print_summary(args: &Args, results: &[Value], update: Option<&Value>) {
    println!();
    println!(
        "consumers: {} x {} workers, batch size {}",
        args.consumers, args.concurrency, args.batch_size
    );
    println!("| records | kept | accepted (s) | completed (s) | end to end /s | raw best /s | ratio | peak RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    for result in results {
        let peaks: Vec<String> = result["peakRssMiB"]
            .as_array()
            .map(|peaks| {
                peaks
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {:.0}",
                            p["process"].as_str().unwrap_or("?"),
                            p["mib"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} | {} |",
            result["records"],
            result["kept"],
            result["acceptedSeconds"].as_f64().unwrap_or(0.0),
            result["completedSeconds"].as_f64().unwrap_or(0.0),
            result["endToEndPerSecond"].as_f64().unwrap_or(0.0),
            result["rawBestPerSecond"].as_f64().unwrap_or(0.0),
            result["ratio"].as_f64().unwrap_or(0.0),
            peaks.join(", "),
        );
    }
    if let Some(update) = update {
        println!();
        println!(
            "update of {} seeded contacts ({} records): end to end {:.0}/s, raw best {:.0}/s, ratio {:.2}",
            update["kept"],
            update["records"],
            update["endToEndPerSecond"].as_f64().unwrap_or(0.0),
            update["rawBestPerSecond"].as_f64().unwrap_or(0.0),
            update["ratio"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(latency) = results.iter().find_map(|r| r["latency"].as_object()) {
        println!();
        for (name, figures) in latency {
            if let Some(figures) = figures.as_object() {
                println!(
                    "{name}: p50 {:.1} ms, p99 {:.1} ms, {:.1} req/s over {} requests ({} non-2xx)",
                    figures["p50Ms"].as_f64().unwrap_or(0.0),
                    figures["p99Ms"].as_f64().unwrap_or(0.0),
                    figures["perSecond"].as_f64().unwrap_or(0.0),
                    figures["requests"],
                    figures["non2xx"],
                );
            }
        }
    }
}
