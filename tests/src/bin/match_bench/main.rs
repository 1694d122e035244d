//! Matching by key against the raw store (issue 15): `update` of existing contacts' names
//! by document id and by email, `upsert` by an external id field and `delete` by id, each
//! through the platform end to end and by a raw client that does nothing else, on the
//! same server holding the same documents.
//!
//! For each store size: a fresh deployment; the platform's `contacts` and a raw collection
//! (same indexes) each seeded with the same documents (ObjectId ids, an email, a name and
//! an `sfId`). Then, per workload, `--changes` documents spread over the collection are
//! changed: once through the platform (an NDJSON upload, timed until the view says
//! `completed`), then by the raw client with `update_one` / `delete_one` one document at a
//! time and with `update` / `delete` commands of 32 statements, at each of `--in-flight`
//! requests at once. The raw best of all is the baseline. A delete's documents are put
//! back (untimed) after every run so each run meets the same store.
//!
//! On FerretDB 1.24 every statement scans the collection (docs/benchmarks.md): the time of
//! a change grows with the collection, not with the number of changes, hence a sample of
//! changes over a large collection.
//!
//!   scripts/bench.sh builds the binaries; then
//!   BULK_BINARIES_DIR=$PWD/target/release ./target/release/match_bench

mod raw;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bulk_tests::{Deployment, DeploymentOptions};
use clap::Parser;
use mongodb::bson::{doc, Document};
use mongodb::Database;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Matching by id, email and external id: the platform against the raw store")]
struct Args {
    /// Documents in the store, one fresh deployment each.
    #[arg(long, value_delimiter = ',', default_value = "20000,100000")]
    documents: Vec<u64>,
    /// Documents changed per run, one figure per store size (the last repeats).
    #[arg(long, value_delimiter = ',', default_value = "2000,500")]
    changes: Vec<u64>,
    /// Requests in flight tried by the raw client.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,50")]
    in_flight: Vec<usize>,
    /// Workers of the one consumer process (`CONSUMER_CONCURRENCY`).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Statements per command of the consumer (`MONGO_STATEMENTS_PER_COMMAND`): FerretDB
    /// holds a PostgreSQL connection per statement of a running command, so workers times
    /// this must stay below its pool (400 in the harness).
    #[arg(long, default_value_t = 32)]
    statements_per_command: usize,
    /// Records per batch (`BATCH_SIZE`): small enough that every worker has batches.
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    /// Workloads to run (update-id, update-email, upsert-external-id, delete-id).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "update-id,update-email,upsert-external-id,delete-id"
    )]
    workloads: Vec<String>,
}

const ACCOUNT: &str = "bench";
const RAW: &str = "raw_contacts";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    // FerretDB holds a PostgreSQL connection per statement of a running command and hangs,
    // silently, when its pool (400 in the harness) runs dry.
    ensure!(
        args.concurrency * args.statements_per_command < 400,
        "--concurrency x --statements-per-command must stay below FerretDB's pool of 400"
    );
    if std::env::var_os("BULK_BINARIES_DIR").is_none() {
        bail!("BULK_BINARIES_DIR is not set: build the release binaries and point it at them");
    }
    let mut rows = Vec::new();
    for (position, &documents) in args.documents.iter().enumerate() {
        let changes = args
            .changes
            .get(position)
            .or(args.changes.last())
            .copied()
            .unwrap_or(1000)
            .min(documents);
        rows.extend(run_size(&args, documents, changes).await?);
    }
    println!();
    println!(
        "consumer: 1 process x {} workers, batch size {}, {} statements per command",
        args.concurrency, args.batch_size, args.statements_per_command
    );
    println!("| documents | changes | workload | platform /s | raw best /s (how) | ratio | raw best with the account in the filter /s | ratio |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} ({}) | {:.2} | {:.0} | {:.2} |",
            row["documents"],
            row["changes"],
            row["workload"].as_str().unwrap_or("?"),
            row["platformPerSecond"].as_f64().unwrap_or(0.0),
            row["rawBestPerSecond"].as_f64().unwrap_or(0.0),
            row["rawBest"].as_str().unwrap_or("?"),
            row["ratio"].as_f64().unwrap_or(0.0),
            row["rawAccountScopedBestPerSecond"].as_f64().unwrap_or(0.0),
            row["ratioAccountScoped"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}

async fn run_size(args: &Args, documents: u64, changes: u64) -> Result<Vec<Value>> {
    let options = DeploymentOptions {
        batch_size: args.batch_size,
        consumer_concurrency: args.concurrency,
        records_per_minute: 1_000_000_000,
        requests_per_minute: 1_000_000_000,
        env: vec![
            ("RUST_LOG", "warn".to_owned()),
            (
                "MONGO_STATEMENTS_PER_COMMAND",
                args.statements_per_command.to_string(),
            ),
        ],
        ..DeploymentOptions::default()
    };
    let deployment = Deployment::start(options, &["c1"]).await?;
    let database = infra::mongo::connect(&deployment.services.mongodb_uri, "bench").await?;
    let seeded = raw::Seeded::new(documents);
    raw::seed(&database, infra::mongo::CONTACTS, ACCOUNT, &seeded).await?;
    raw::fresh_collection(&database, RAW).await?;
    raw::seed(&database, RAW, ACCOUNT, &seeded).await?;
    let key = deployment.key_for(ACCOUNT).await?;
    let put = deployment
        .send(
            reqwest::Method::PUT,
            "/fields/contact",
            Some(&json!({ "fields": [{ "name": "sfId", "type": "string", "unique": true }] })),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await?;
    ensure!(put.status == 200, "{}", put.body);
    // The external id's unique index, made by the platform's first action matched by it,
    // and the same on the raw collection: not part of any timing.
    let warm_up = end_to_end(
        &deployment,
        "upsert",
        Some("externalId:sfId"),
        &[json!({ "sfId": seeded.sf_id(0), "email": seeded.email(0), "name": "warm" })],
    )
    .await?;
    ensure!(warm_up.1["succeeded"] == 1, "{}", warm_up.1);
    raw::unique_index(&database, RAW, "sfId").await?;
    eprintln!("[match] {documents} documents seeded twice; {changes} changes per run");

    let chosen: Vec<u64> = (0..changes).map(|i| i * documents / changes).collect();
    // Untimed, as many changes as a timed run, on the neighbours of the chosen documents
    // (other documents while changes < documents, as in every default): the consumer's and
    // FerretDB's connection pools grow on first use (a PostgreSQL backend each), and the
    // first timed run would otherwise pay for them alone (measured: the same update ran
    // at 272/s first and 336-341/s after another).
    let pools_warm_up: Vec<Value> = chosen
        .iter()
        // Distinct names: identical changes would be grouped into one statement a batch.
        .map(
            |&i| json!({ "email": seeded.email((i + 1) % documents), "name": format!("Warm {i}") }),
        )
        .collect();
    let (_, view) = end_to_end(&deployment, "update", None, &pools_warm_up).await?;
    ensure!(view["status"] == "completed", "{view}");
    let mut rows = Vec::new();
    for (round, workload) in args.workloads.iter().enumerate() {
        let (action, match_by, records) = match workload.as_str() {
            "update-id" => (
                "update",
                Some("id"),
                chosen
                    .iter()
                    .map(|&i| json!({ "id": seeded.id(i).to_hex(), "name": format!("Renamed {i} r{round}") }))
                    .collect::<Vec<_>>(),
            ),
            "update-email" => (
                "update",
                None,
                chosen
                    .iter()
                    .map(|&i| json!({ "email": seeded.email(i), "name": format!("Renamed {i} r{round}") }))
                    .collect(),
            ),
            "upsert-external-id" => (
                "upsert",
                Some("externalId:sfId"),
                chosen
                    .iter()
                    .map(|&i| json!({ "sfId": seeded.sf_id(i), "email": seeded.email(i), "name": format!("Renamed {i} r{round}") }))
                    .collect(),
            ),
            "delete-id" => (
                "delete",
                Some("id"),
                chosen
                    .iter()
                    .map(|&i| json!({ "id": seeded.id(i).to_hex() }))
                    .collect(),
            ),
            other => bail!("unknown workload {other}"),
        };
        settle(&deployment)?;
        let (took, view) = end_to_end(&deployment, action, match_by, &records).await?;
        ensure!(
            view["succeeded"].as_u64() == Some(changes),
            "{workload}: {view}"
        );
        let platform = changes as f64 / took.as_secs_f64();
        eprintln!(
            "[match] {workload} through the platform: {changes} in {took:?} ({platform:.0}/s)"
        );
        if workload == "delete-id" {
            raw::put_back(&database, infra::mongo::CONTACTS, ACCOUNT, &seeded, &chosen).await?;
        }

        // By id, the raw client runs twice: by `_id` alone (the baseline) and by
        // `_id` and account, the filter a multi-tenant service has to send.
        let keys: &[raw::Key] = match workload.as_str() {
            "update-id" | "delete-id" => &[raw::Key::Id, raw::Key::IdInAccount],
            "update-email" => &[raw::Key::Email],
            _ => &[raw::Key::ExternalId],
        };
        let mut raw_runs = Vec::new();
        for &key in keys {
            for shape in raw::Shape::ALL {
                for &in_flight in &args.in_flight {
                    settle(&deployment)?;
                    let job = raw::Job {
                        database: &database,
                        collection: RAW,
                        account: ACCOUNT,
                        seeded: &seeded,
                        chosen: &chosen,
                        round,
                    };
                    let (done, took) = match workload.as_str() {
                        "update-id" | "update-email" => {
                            job.update_names(key, shape, in_flight).await?
                        }
                        "upsert-external-id" => job.upsert_by_sf_id(shape, in_flight).await?,
                        _ => {
                            let run = job.delete_by_id(key, shape, in_flight).await?;
                            raw::put_back(&database, RAW, ACCOUNT, &seeded, &chosen).await?;
                            run
                        }
                    };
                    ensure!(
                        done == changes,
                        "raw {workload} {shape:?}: {done} of {changes}"
                    );
                    let rate = done as f64 / took.as_secs_f64();
                    eprintln!("[match] raw {workload} {key:?} {shape:?} x{in_flight}: {took:?} ({rate:.0}/s)");
                    raw_runs.push(json!({ "key": format!("{key:?}"), "shape": format!("{shape:?}"), "inFlight": in_flight, "perSecond": rate }));
                }
            }
        }
        // The baseline: the raw client's best by `_id` alone where it ran so.
        let best = best_of(raw_runs.iter().filter(|run| run["key"] != "IdInAccount"));
        let best_rate = best["perSecond"].as_f64().unwrap_or(f64::NAN);
        let scoped = best_of(raw_runs.iter().filter(|run| run["key"] != "Id"));
        let scoped_rate = scoped["perSecond"].as_f64().unwrap_or(f64::NAN);
        let row = json!({
            "documents": documents,
            "changes": changes,
            "workload": workload,
            "platformPerSecond": platform,
            "raw": raw_runs,
            "rawBestPerSecond": best_rate,
            "rawBest": format!("{} x{}", best["shape"].as_str().unwrap_or("?"), best["inFlight"]),
            "ratio": platform / best_rate,
            "rawAccountScopedBestPerSecond": scoped_rate,
            "ratioAccountScoped": platform / scoped_rate,
        });
        println!("{row}");
        rows.push(row);
    }
    check_untouched(&database, &seeded).await?;
    Ok(rows)
}

fn best_of<'a>(runs: impl Iterator<Item = &'a Value>) -> Value {
    runs.max_by(|a, b| {
        a["perSecond"]
            .as_f64()
            .partial_cmp(&b["perSecond"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    })
    .cloned()
    .unwrap_or(Value::Null)
}

/// Every timed run meets the store alike: an update leaves a dead row version behind in
/// PostgreSQL that every later scan reads until a vacuum, so runs would otherwise get slower
/// in the order they run.
/// And a checkpoint, so that no run flushes the dirty pages of the ones before.
fn settle(deployment: &Deployment) -> Result<()> {
    deployment.services.psql("VACUUM ANALYZE")?;
    deployment.services.psql("CHECKPOINT")?;
    Ok(())
}

/// Submits `records` as one NDJSON upload; returns the time from the first byte to the
/// view saying `completed`, and the view.
async fn end_to_end(
    deployment: &Deployment,
    action: &str,
    match_by: Option<&str>,
    records: &[Value],
) -> Result<(Duration, Value)> {
    let mut body = Vec::new();
    for record in records {
        serde_json::to_writer(&mut body, record)?;
        body.push(b'\n');
    }
    let mut path =
        format!("/bulk-actions?accountId={ACCOUNT}&entityType=contact&actionType={action}");
    if let Some(match_by) = match_by {
        path.push_str(&format!("&matchBy={match_by}"));
    }
    let started = Instant::now();
    let reply = deployment
        .upload(&path, "application/x-ndjson", body, &[])
        .await?;
    ensure!(reply.status == 202, "{} {}", reply.status, reply.body);
    let id = reply.body["actionId"].as_str().context("an id")?.to_owned();
    loop {
        let (status, view) = deployment.get_json(&format!("/bulk-actions/{id}")).await?;
        if status == 200 && view["status"] == "completed" {
            return Ok((started.elapsed(), view));
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("not completed within an hour: {view}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The platform changed names only: every seeded document still has its email and sfId.
async fn check_untouched(database: &Database, seeded: &raw::Seeded) -> Result<()> {
    let contacts = database.collection::<Document>(infra::mongo::CONTACTS);
    let sample = contacts
        .find_one(doc! { "_id": seeded.id(1) })
        .await?
        .context("a seeded contact")?;
    ensure!(sample.get_str("sfId")? == seeded.sf_id(1), "{sample}");
    ensure!(sample.get_object_id("_id")? == seeded.id(1));
    let count = contacts
        .count_documents(doc! { "accountId": ACCOUNT })
        .await?;
    ensure!(count == seeded.documents, "{count} contacts");
    Ok(())
}
