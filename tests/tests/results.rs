//! Result files and retries (issue 16): every record in exactly one file, a failed file
//! fixed and submitted as it is, formula cells neutralised and typed back, retries of a
//! cancelled action's records, and another account's action out of reach.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bulk_tests::{AppOptions, TestApp};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const STATUSES: [&str; 4] = ["succeeded", "failed", "skipped", "unprocessed"];
/// Names a spreadsheet would run as formulas, and one it would not.
const FORMULAS: [&str; 7] = ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tTab", "\rCR", "plain"];

/// An update of six existing contacts and the records around them: two that are not there
/// (`not_found` when applied), two invalid emails (failed at submission), a duplicate
/// (skipped); paced at two records an hour and cancelled after the first batch, so the
/// rest is `unprocessed`.
async fn action_with_every_status(app: &TestApp) -> Result<(String, Vec<Value>)> {
    let seed: Vec<Value> = (0..6)
        .map(|i| json!({"email": format!("c{i}@x.io"), "name": "old"}))
        .collect();
    let seeded = app
        .submit(&json!({"entityType": "contact", "actionType": "create", "data": seed}))
        .await?;
    app.wait_projected_terminal(&seeded, WAIT).await?;

    let mut records = vec![
        json!({"email": "c0@x.io", "name": "first"}),
        json!({"email": "gone1@x.io", "name": FORMULAS[0]}),
        json!({"email": "not-an-email", "name": FORMULAS[1]}),
        json!({"email": "C0@x.io", "name": "dup"}),
        json!({"email": "also bad@", "name": FORMULAS[2]}),
    ];
    for (i, name) in FORMULAS.iter().enumerate().skip(3) {
        records.push(json!({"email": format!("c{}@x.io", i - 2), "name": name, "age": 30 + i}));
    }
    records.push(json!({"email": "gone2@x.io", "status": null, "name": "x"}));
    let action = app
        .submit(&json!({
            "entityType": "contact",
            "actionType": "update",
            "pacing": {"batchSize": 2, "intervalSeconds": 3600},
            "data": records,
        }))
        .await?;
    app.wait_view(&action, WAIT, |view| {
        view["processedByBatches"].as_u64() >= Some(2)
    })
    .await?;
    let (status, body) = app
        .post_json(&format!("/bulk-actions/{action}/cancel"), &json!({}))
        .await?;
    ensure!(status == 200, "cancel: {status} {body}");
    let view = app.wait_projected_terminal(&action, WAIT).await?;
    ensure!(view["status"] == "cancelled", "{view}");
    for count in ["succeeded", "failed", "skipped", "unprocessed"] {
        ensure!(view[count].as_u64() >= Some(1), "no {count}: {view}");
    }
    Ok((action, records))
}

async fn file(app: &TestApp, action: &str, status: &str, format: &str) -> Result<String> {
    let (code, headers, text) = app
        .get_text(
            &format!("/bulk-actions/{action}/results?status={status}&format={format}"),
            &[],
        )
        .await?;
    ensure!(code == 200, "{status} {format}: {code} {text}");
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let expected = if format == "csv" {
        "text/csv"
    } else {
        "application/x-ndjson"
    };
    ensure!(content_type.starts_with(expected), "{content_type}");
    Ok(text)
}

fn csv_rows(text: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    let mut rows = Vec::new();
    for row in reader.records() {
        let row = row?;
        rows.push(
            header
                .iter()
                .cloned()
                .zip(row.iter().map(str::to_owned))
                .collect(),
        );
    }
    Ok(rows)
}

fn ndjson_rows(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .map(|line| serde_json::from_str(line).context("an NDJSON row"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_in_exactly_one_file_and_a_fixed_failed_file_goes_through() -> Result<()> {
    let mut app = TestApp::spawn(AppOptions::default()).await?;
    let (action, records) = action_with_every_status(&app).await?;
    let logs: BTreeMap<u64, String> = app
        .all_logs(&action)
        .await?
        .iter()
        .map(|line| {
            (
                line["index"].as_u64().unwrap_or(u64::MAX),
                line["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();

    // Each format: every index once, in order within a file, under its status.
    for format in ["csv", "ndjson"] {
        let mut seen = BTreeMap::new();
        for status in STATUSES {
            let text = file(&app, &action, status, format).await?;
            let indexes: Vec<u64> = if format == "csv" {
                csv_rows(&text)?
                    .iter()
                    .map(|row| row["_index"].parse().unwrap_or(u64::MAX))
                    .collect()
            } else {
                ndjson_rows(&text)?
                    .iter()
                    .map(|row| row["_index"].as_u64().unwrap_or(u64::MAX))
                    .collect()
            };
            ensure!(
                indexes.windows(2).all(|w| w[0] < w[1]),
                "{status} out of order: {indexes:?}"
            );
            for index in indexes {
                ensure!(
                    seen.insert(index, status.to_owned()).is_none(),
                    "{index} twice"
                );
            }
        }
        ensure!(seen == logs, "{format}: {seen:?} != {logs:?}");
        ensure!(seen.len() == records.len());
    }

    // Each file carries what was sent, formula cells quoted in CSV; succeeded rows keep
    // no fields.
    for row in csv_rows(&file(&app, &action, "succeeded", "csv").await?)? {
        ensure!(
            row["_fields"] == "none" && !row.contains_key("name"),
            "{row:?}"
        );
    }
    let failed_csv = file(&app, &action, "failed", "csv").await?;
    let unprocessed_csv = file(&app, &action, "unprocessed", "csv").await?;
    for text in [&failed_csv, &unprocessed_csv] {
        for row in csv_rows(text)? {
            ensure!(row["_fields"] == "kept", "{row:?}");
            let index: usize = row["_index"].parse()?;
            let sent = records[index]["name"].as_str().unwrap_or_default();
            ensure!(
                row["name"] == domain::spreadsheet::guard(sent),
                "{row:?} for {sent:?}"
            );
            let formula = sent.starts_with(['=', '+', '@', '\t', '\r'])
                || (sent.starts_with('-') && sent.parse::<f64>().is_err());
            ensure!(
                !formula || row["name"].starts_with('\''),
                "{row:?} not neutralised"
            );
        }
    }

    // Fixed in the text and submitted as they are (an upsert, so the missing ones are
    // made): the failed file as CSV and as NDJSON, the unprocessed one as CSV.
    let fix = |text: &str| {
        text.replace("not-an-email", "fixed1@x.io")
            .replace("also bad@", "fixed2@x.io")
    };
    let failed_ndjson = file(&app, &action, "failed", "ndjson").await?;
    for (text, content_type) in [
        (fix(&failed_csv), "text/csv"),
        (fix(&failed_ndjson), "application/x-ndjson"),
        (unprocessed_csv.clone(), "text/csv"),
    ] {
        let reply = app
            .upload(
                "/bulk-actions?accountId=acme&entityType=contact&actionType=upsert",
                content_type,
                text,
                &[],
            )
            .await?;
        ensure!(reply.status == 202, "{}", reply.body);
        let resubmitted = reply.body["actionId"]
            .as_str()
            .context("actionId")?
            .to_owned();
        let view = app.wait_projected_terminal(&resubmitted, WAIT).await?;
        ensure!(
            view["succeeded"] == view["totalRecords"] && view["failed"] == 0,
            "{content_type}: {view}"
        );
    }
    // What the tenant typed is what the contacts hold, the quotes taken off.
    for text in [&failed_csv, &unprocessed_csv] {
        for row in csv_rows(text)? {
            let index: usize = row["_index"].parse()?;
            let email = match records[index]["email"].as_str().unwrap_or_default() {
                "not-an-email" => "fixed1@x.io".to_owned(),
                "also bad@" => "fixed2@x.io".to_owned(),
                other => other.to_lowercase(),
            };
            let contact = app
                .contacts()
                .find_one(mongodb::bson::doc! { "accountId": "acme", "email": &email })
                .await?
                .with_context(|| format!("no contact {email}"))?;
            let typed = records[index]["name"].as_str().unwrap_or_default();
            ensure!(contact.get_str("name")? == typed, "{contact} for {typed:?}");
        }
    }

    // Bad requests, and a replay rebuilding the result rows exactly.
    for query in ["status=done", "format=xlsx", "status=failed&limit=3"] {
        let (code, _, body) = app
            .get_text(&format!("/bulk-actions/{action}/results?{query}"), &[])
            .await?;
        ensure!(
            code == 400 && body.contains("invalid_query"),
            "{query}: {code} {body}"
        );
    }
    let (_, headers, _) = app
        .get_text(
            &format!("/bulk-actions/{action}/results?status=failed"),
            &[("accept", "application/x-ndjson")],
        )
        .await?;
    ensure!(headers
        .get("content-type")
        .is_some_and(|v| v == "application/x-ndjson"));
    let before = app.all_docs(infra::mongo::RESULT_VIEWS).await?;
    ensure!(!before.is_empty());
    app.stop_projector().await;
    app.replay().await?;
    ensure!(
        before == app.all_docs(infra::mongo::RESULT_VIEWS).await?,
        "replay changed the result rows"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_takes_exactly_the_chosen_records_once() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let (action, _) = action_with_every_status(&app).await?;
    let chosen = |rows: Vec<Value>| -> BTreeSet<String> {
        rows.iter()
            .map(|row| row["_key"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let mut expected = chosen(ndjson_rows(
        &file(&app, &action, "failed", "ndjson").await?,
    )?);
    let unprocessed = chosen(ndjson_rows(
        &file(&app, &action, "unprocessed", "ndjson").await?,
    )?);
    let count = expected.len() + unprocessed.len();
    expected.extend(unprocessed);

    let path = format!("/bulk-actions/{action}/retry");
    // The original's drip would take hours: the retry drops it.
    let body = json!({"pacing": null});
    let first = app
        .send(
            reqwest::Method::POST,
            &path,
            Some(&body),
            &[("idempotency-key", "retry-1")],
        )
        .await?;
    ensure!(first.body["pacing"].is_null(), "{}", first.body);
    ensure!(first.status == 202, "{}", first.body);
    ensure!(first.body["retryOf"] == action.as_str(), "{}", first.body);
    let retry = first.body["actionId"]
        .as_str()
        .context("actionId")?
        .to_owned();
    let again = app
        .send(
            reqwest::Method::POST,
            &path,
            Some(&body),
            &[("idempotency-key", "retry-1")],
        )
        .await?;
    let other = app
        .send(
            reqwest::Method::POST,
            &path,
            Some(&json!({})),
            &[("idempotency-key", "retry-1")],
        )
        .await?;
    ensure!(
        other.status == 422,
        "another body, same key: {}",
        other.body
    );
    ensure!(
        again.status == 202 && again.body["actionId"] == retry.as_str(),
        "{}",
        again.body
    );
    ensure!(again
        .headers
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true"));

    let view = app.wait_projected_terminal(&retry, WAIT).await?;
    ensure!(
        view["totalRecords"].as_u64() == Some(count as u64),
        "{view}"
    );
    let logs = app.all_logs(&retry).await?;
    let keys: BTreeSet<String> = logs
        .iter()
        .map(|line| line["email"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(
        keys == expected && logs.len() == count,
        "{keys:?} != {expected:?}"
    );
    let original = app
        .wait_view(&action, WAIT, |view| {
            view["retries"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await?;
    ensure!(original["retries"] == json!([retry]), "{original}");

    // Nothing matches: 422. Not finished: 409. Unknown field: 400.
    let none = app
        .send(
            reqwest::Method::POST,
            &path,
            Some(&json!({"statuses": ["skipped"], "codes": ["not_found"]})),
            &[],
        )
        .await?;
    ensure!(
        none.status == 422 && none.body["error"]["code"] == "nothing_to_retry",
        "{}",
        none.body
    );
    let unknown = app
        .send(
            reqwest::Method::POST,
            &path,
            Some(&json!({"status": ["failed"]})),
            &[],
        )
        .await?;
    ensure!(unknown.status == 400, "{}", unknown.body);
    let pending = app
        .submit(&json!({
            "entityType": "contact", "actionType": "upsert",
            "pacing": {"batchSize": 1, "intervalSeconds": 3600},
            "data": [{"email": "p1@x.io"}, {"email": "p2@x.io"}],
        }))
        .await?;
    let busy = app
        .send(
            reqwest::Method::POST,
            &format!("/bulk-actions/{pending}/retry"),
            Some(&json!({})),
            &[],
        )
        .await?;
    ensure!(
        busy.status == 409 && busy.body["error"]["code"] == "action_not_finished",
        "{}",
        busy.body
    );

    // Another account sees neither the files nor the retry.
    let stranger = app.key_for("stranger").await?;
    let bearer = format!("Bearer {stranger}");
    let (code, _, _) = app
        .get_text(
            &format!("/bulk-actions/{action}/results?status=failed"),
            &[("authorization", &bearer)],
        )
        .await?;
    ensure!(code == 404, "results of another account: {code}");
    let foreign = app
        .send(
            reqwest::Method::POST,
            &path,
            Some(&json!({})),
            &[("authorization", &bearer)],
        )
        .await?;
    ensure!(
        foreign.status == 404,
        "retry of another account: {}",
        foreign.body
    );
    Ok(())
}

/// A finished action whose last records are not projected yet (no projector runs here)
/// has no complete result file to give: `409 results_not_ready`, never a shorter file,
/// and no retry of part of its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_wait_for_the_projection_of_a_finished_action() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        projectors: 0,
        ..AppOptions::default()
    })
    .await?;
    let action = app
        .submit(&json!({"entityType": "contact", "actionType": "update",
            "data": [{"email": "nobody@x.io", "name": "N"}]}))
        .await?;
    app.wait_view(&action, WAIT, |view| view["status"] == "completed")
        .await?;
    let (status, _, body) = app
        .get_text(
            &format!("/bulk-actions/{action}/results?status=failed"),
            &[],
        )
        .await?;
    ensure!(
        status == 409 && body.contains("results_not_ready"),
        "{status} {body}"
    );
    let (status, body) = app
        .post_json(&format!("/bulk-actions/{action}/retry"), &json!({}))
        .await?;
    ensure!(
        status == 409 && body["error"]["code"] == "results_not_ready",
        "{status} {body}"
    );
    Ok(())
}

/// An account's kept records are bounded whatever number of actions it submits: once its
/// actions keep `RESULT_KEPT_MAX_BYTES_PER_ACCOUNT`, later failing records keep nothing
/// (`truncated`), both those refused at submission and those of batches, and the count in
/// Redis stays near the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_kept_records_stay_within_its_bound() -> Result<()> {
    const LIMIT: u64 = 60_000;
    let app = TestApp::spawn(AppOptions {
        kept_per_account: LIMIT,
        ..AppOptions::default()
    })
    .await?;
    let name = "n".repeat(240);
    let failing = |prefix: &str| -> Vec<Value> {
        (0..200)
            .map(|i| json!({"email": format!("{prefix}{i}@x.io"), "name": format!("{name}{i}")}))
            .collect()
    };
    // Updates of contacts that are not there: every record fails when applied.
    let first = app
        .submit(&json!({"entityType": "contact", "actionType": "update",
            "pacing": {"batchSize": 50, "intervalSeconds": 1}, "data": failing("a")}))
        .await?;
    app.wait_projected_terminal(&first, WAIT).await?;
    let rows = ndjson_rows(&file(&app, &first, "failed", "ndjson").await?)?;
    let kept = rows.iter().filter(|row| row["_fields"] == "kept").count();
    ensure!(rows.len() == 200, "{} rows", rows.len());
    ensure!(
        (100..200).contains(&kept),
        "{kept} of 200 kept whole under a {LIMIT}-byte bound"
    );

    // A second action, of records refused at submission and records that fail: nothing
    // more is kept.
    let mut records = failing("b");
    records.extend((0..50).map(|i| json!({"email": format!("bad-{i}"), "name": "x"})));
    let second = app
        .submit(&json!({"entityType": "contact", "actionType": "update", "data": records}))
        .await?;
    app.wait_projected_terminal(&second, WAIT).await?;
    let rows = ndjson_rows(&file(&app, &second, "failed", "ndjson").await?)?;
    ensure!(rows.len() == 250, "{} rows", rows.len());
    ensure!(
        rows.iter().all(|row| row["_fields"] == "truncated"),
        "an account past its bound keeps nothing: {:?}",
        rows.iter()
            .map(|row| row["_fields"].clone())
            .collect::<Vec<_>>()
    );
    let store = infra::EventStore::new(
        infra::redis_conn::shared(app.redis_url()).await?,
        app.keys(),
    );
    let counted = store
        .account_kept(&domain::AccountId::parse("acme").context("account")?)
        .await?;
    // Batches settling together may each take the room left: one batch's worth over.
    ensure!(
        (LIMIT / 2..=LIMIT + 50 * 400).contains(&counted),
        "the account's count is {counted}"
    );
    Ok(())
}

/// Batches of large records that all fail settle as events of several MiB each: their
/// records are still kept whole, the projector and the result file get through them, and
/// no read of the stream returns more than 4 MiB past its first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_failing_batches_are_kept_whole_and_read_in_bounded_pages() -> Result<()> {
    const RECORDS: usize = 300;
    const NOTES: usize = 5;
    let app = TestApp::spawn(AppOptions::default()).await?;
    let notes: Vec<Value> = (0..NOTES)
        .map(|n| json!({"name": format!("notes{n}"), "type": "string"}))
        .collect();
    // The account `submit` acts for.
    let key = format!("Bearer {}", app.key_for("acme").await?);
    let defined = app
        .send(
            reqwest::Method::PUT,
            "/fields/contact",
            Some(&json!({"fields": notes})),
            &[("authorization", key.as_str())],
        )
        .await?;
    ensure!(defined.status == 200, "{} {}", defined.status, defined.body);
    // About 50 KB each.
    let records: Vec<Value> = (0..RECORDS)
        .map(|i| {
            let mut record = json!({"email": format!("nobody{i}@x.io")});
            for n in 0..NOTES {
                record[format!("notes{n}")] = json!(format!("{i:05}{}", "n".repeat(9_900)));
            }
            record
        })
        .collect();
    // An update of contacts that are not there: every record fails when applied, five
    // MB of them in each batch's event.
    let action = app
        .submit(&json!({
            "entityType": "contact",
            "actionType": "update",
            "pacing": {"batchSize": 100, "intervalSeconds": 1},
            "data": records,
        }))
        .await?;
    let view = app.wait_projected_terminal(&action, WAIT).await?;
    ensure!(view["failed"] == RECORDS as u64, "{view}");

    let store = infra::EventStore::new(
        infra::redis_conn::shared(app.redis_url()).await?,
        app.keys(),
    );
    let action_id = domain::ActionId::parse(&action).context("id")?;
    let everything = bulk_tests::all_events(&store, action_id).await?;
    ensure!(
        everything.len() as u64 == view["lastSeq"].as_u64().unwrap_or_default(),
        "{} events, view {view}",
        everything.len()
    );
    let mut position: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.read_raw(action_id, position.as_deref(), 16).await?;
        let Some(last) = page.last() else { break };
        let bytes: Vec<usize> = page.iter().map(|event| event.data.len()).collect();
        let past_first: usize = bytes.iter().skip(1).sum();
        ensure!(past_first <= 4 << 20, "a page of {bytes:?} bytes");
        position = Some(last.position.clone());
        pages += 1;
    }
    ensure!(
        pages > 3,
        "{pages} pages: the large events did not end pages"
    );

    let rows = ndjson_rows(&file(&app, &action, "failed", "ndjson").await?)?;
    ensure!(rows.len() == RECORDS, "{} rows", rows.len());
    for (i, row) in rows.iter().enumerate() {
        ensure!(row["_fields"] == "kept", "row {i}: {}", row["_fields"]);
        ensure!(row["_index"] == i as u64, "row {i}: {}", row["_index"]);
        ensure!(
            row["notes4"] == records[i]["notes4"],
            "row {i} lost its notes"
        );
    }
    Ok(())
}

/// The export benchmark (docs/benchmarks.md): a million failed rows, each with its record,
/// streamed as CSV and as NDJSON through the api in this process; the process' peak RSS is
/// sampled while it streams. Run with a release build:
/// `cargo test --release -p bulk-tests --test results -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_million_row_export_streams_in_bounded_memory() -> Result<()> {
    const ROWS: u32 = 1_000_000;
    const PER_EVENT: u32 = 1_000;
    let app = TestApp::spawn(AppOptions {
        consumers: 0,
        projectors: 0,
        ..AppOptions::default()
    })
    .await?;
    let action = app
        .submit(&json!({"entityType": "contact", "actionType": "upsert", "data": [{"email": "a@x.io"}]}))
        .await?;
    let action_id = domain::ActionId::parse(&action).context("id")?;
    // What the projector would write for a thousand batches of failing records.
    let buckets = app
        .database
        .collection::<infra::results::StoredResultBucket>(infra::mongo::RESULT_VIEWS);
    let started = std::time::Instant::now();
    for event in 0..ROWS / PER_EVENT {
        let first = event * PER_EVENT;
        let outcomes: Vec<domain::RecordOutcome> = (first..first + PER_EVENT)
            .map(|index| {
                domain::RecordOutcome::new(
                    index,
                    Some(format!("person{index}@example.com")),
                    domain::OutcomeCode::NotFound,
                    Some("no contact with this email"),
                )
            })
            .collect();
        let submitted: Vec<domain::results::SubmittedRecord> = (first..first + PER_EVENT)
            .map(|index| {
                domain::results::SubmittedRecord::raw(
                    index,
                    &json!({"email": format!("person{index}@example.com"), "name": format!("Person {index}"), "age": index % 100}),
                )
            })
            .collect();
        let docs = infra::results::StoredResultBucket::for_event(
            action_id,
            u64::from(event) + 2,
            &outcomes,
            &submitted,
        );
        buckets.insert_many(docs).await?;
    }
    eprintln!("stored {ROWS} rows in {:?}", started.elapsed());

    for format in ["csv", "ndjson"] {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_kib()));
        let before = rss_kib();
        let sampling = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let started = std::time::Instant::now();
        let key = app.key_for("acme").await?;
        let mut response = app
            .http
            .get(app.url(&format!(
                "/bulk-actions/{action}/results?status=failed&format={format}"
            )))
            .bearer_auth(key)
            .send()
            .await?;
        ensure!(response.status() == 200);
        let (mut bytes, mut lines) = (0usize, 0usize);
        while let Some(chunk) = response.chunk().await? {
            bytes += chunk.len();
            lines += chunk.iter().filter(|b| **b == b'\n').count();
        }
        let elapsed = started.elapsed();
        sampling.abort();
        let rows = if format == "csv" { lines - 1 } else { lines };
        ensure!(rows == ROWS as usize, "{format}: {rows} rows");
        eprintln!(
            "{format}: {rows} rows, {} MiB in {:.2?}: {:.0} rows/s; RSS {} MiB before, peak {} MiB",
            bytes >> 20,
            elapsed,
            f64::from(ROWS) / elapsed.as_secs_f64(),
            before >> 10,
            peak.load(std::sync::atomic::Ordering::Relaxed) >> 10,
        );
    }
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
