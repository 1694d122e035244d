//! Flow control end to end: cancel, pause and resume at every status, PATCH of start time
//! and pace, punctual schedules, fairness across accounts, the processing limit across two
//! consumer processes, the request limit across two api processes, a schedule that
//! survives restarting every process and Redis, and the scripts' GCRA against its Rust twin.
//!
//! These tests measure time, so they run one at a time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bulk_tests::error_code as code;
use bulk_tests::{ApiClient, AppOptions, Deployment, DeploymentOptions, TestApp};
use domain::{ActionId, EventPayload, Timestamp};
use infra::{EventStore, StoredEvent};
use mongodb::bson::doc;
use reqwest::Method;
use serde_json::{json, Value};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(90);

fn create(account: &str, emails: std::ops::Range<usize>) -> Value {
    let data: Vec<Value> = emails
        .map(|i| json!({ "email": format!("u{i}@{account}.io"), "name": format!("U{i}") }))
        .collect();
    json!({ "accountId": account, "entityType": "contact", "actionType": "create", "data": data })
}

fn at_offset(ms: i64) -> String {
    let now = infra::clock::now().millis();
    Timestamp::from_millis(now + ms)
        .expect("a time near now")
        .to_string()
}

fn millis(view: &Value, field: &str) -> Result<i64> {
    let raw = view[field]
        .as_str()
        .with_context(|| format!("{field} in {view}"))?;
    Ok(Timestamp::parse_rfc3339(raw).context("rfc 3339")?.millis())
}

async fn events(redis_url: &str, keys: infra::Keys, action: &str) -> Result<Vec<StoredEvent>> {
    let store = EventStore::new(infra::redis_conn::shared(redis_url).await?, keys);
    let action = ActionId::parse(action).context("a ULID")?;
    Ok(bulk_tests::all_events(&store, action).await?)
}

/// When each batch settled (ms), in order.
async fn settle_times(
    redis_url: &str,
    keys: infra::Keys,
    action: &str,
) -> Result<Vec<(i64, usize, String)>> {
    Ok(events(redis_url, keys, action)
        .await?
        .into_iter()
        .filter_map(|event| match event.envelope.payload {
            EventPayload::BatchProcessed {
                outcomes, consumer, ..
            } => Some((
                event.envelope.occurred_at.millis(),
                outcomes.len(),
                consumer,
            )),
            _ => None,
        })
        .collect())
}

async fn post(client: &ApiClient, path: &str) -> Result<(u16, Value)> {
    client.post_json(path, &json!({})).await
}

async fn patch(client: &ApiClient, action: &str, body: Value) -> Result<(u16, Value)> {
    client.patch_action(action, &body).await
}

async fn view(client: &ApiClient, action: &str) -> Result<Value> {
    client.view(action).await
}

async fn wait_status(client: &ApiClient, action: &str, wanted: &str) -> Result<Value> {
    client
        .wait_view(action, WAIT, |body| body["status"] == wanted)
        .await
}

async fn contacts_of(client: &ApiClient, account: &str) -> Result<u64> {
    Ok(client
        .contacts()
        .count_documents(doc! { "accountId": account })
        .await?)
}

/// A cancelled action's books: every record either applied or `unprocessed`, the contacts
/// are exactly the applied ones, and each unprocessed record has its log line.
async fn assert_cancelled(client: &ApiClient, action: &str, records: u64) -> Result<Value> {
    let body = client.wait_projected_terminal(action, WAIT).await?;
    assert_eq!(body["status"], "cancelled", "{body}");
    let succeeded = body["succeeded"].as_u64().unwrap_or(0);
    let unprocessed = body["unprocessed"].as_u64().unwrap_or(0);
    assert_eq!(succeeded + unprocessed, records, "{body}");
    assert_eq!(body["processedRecords"].as_u64(), Some(succeeded), "{body}");
    // Counted in the database: paging 200,000 lines through the api would take minutes.
    let lines = client.stored_log_lines(action).await?;
    let unprocessed_lines = lines
        .iter()
        .filter(|line| {
            line.get_str("status") == Ok("unprocessed") && line.get_str("code") == Ok("unprocessed")
        })
        .count() as u64;
    assert_eq!(unprocessed_lines, unprocessed);
    assert_eq!(lines.len() as u64, records);
    let (status, page) = client
        .get_json(&format!(
            "/bulk-actions/{action}/logs?status=unprocessed&limit=5"
        ))
        .await?;
    assert_eq!(status, 200);
    if unprocessed > 0 {
        assert_eq!(page["items"][0]["status"], "unprocessed", "{page}");
    }
    let stats = client
        .get_json(&format!("/bulk-actions/{action}/stats"))
        .await?
        .1;
    assert_eq!(stats["unprocessed"].as_u64(), Some(unprocessed), "{stats}");
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pause_and_resume_at_every_status() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // 100 records per second per account: actions stay in flight long enough to act on.
    let app = TestApp::spawn(AppOptions {
        batch_size: 100,
        records_per_minute: 6_000,
        ..AppOptions::default()
    })
    .await?;

    // Finished: every command is a conflict.
    let done = app.submit(&create("done", 0..5)).await?;
    app.wait_projected_terminal(&done, WAIT).await?;
    for command in ["cancel", "pause", "resume"] {
        let (status, body) = post(&app, &format!("/bulk-actions/{done}/{command}")).await?;
        assert_eq!((status, code(&body)), (409, "action_finished"), "{command}");
    }
    let (status, body) = post(&app, "/bulk-actions/01JDQ6V4J8Q0Y5Z6X7W8V9T0S1/cancel").await?;
    assert_eq!((status, code(&body)), (404, "not_found"));

    // Scheduled: pause and resume keep it scheduled; cancel leaves every record unprocessed.
    let mut body = create("sched", 0..300);
    body["scheduledFor"] = json!(at_offset(3_600_000));
    let scheduled = app.submit(&body).await?;
    let (status, paused) = post(&app, &format!("/bulk-actions/{scheduled}/pause")).await?;
    assert_eq!((status, paused["status"].as_str()), (200, Some("paused")));
    let (status, again) = post(&app, &format!("/bulk-actions/{scheduled}/pause")).await?;
    assert_eq!((status, again["status"].as_str()), (200, Some("paused")));
    let (_, resumed) = post(&app, &format!("/bulk-actions/{scheduled}/resume")).await?;
    assert_eq!(resumed["status"], "scheduled");
    let (_, again) = post(&app, &format!("/bulk-actions/{scheduled}/resume")).await?;
    assert_eq!(
        again["status"], "scheduled",
        "resuming what is not paused changes nothing"
    );
    // Cancelling a paused action.
    let (_, paused) = post(&app, &format!("/bulk-actions/{scheduled}/pause")).await?;
    assert_eq!(paused["status"], "paused");
    let (status, cancelling) = post(&app, &format!("/bulk-actions/{scheduled}/cancel")).await?;
    assert_eq!(status, 200);
    assert!(
        matches!(
            cancelling["status"].as_str(),
            Some("cancelling" | "cancelled")
        ),
        "{cancelling}"
    );
    let cancelled = assert_cancelled(&app, &scheduled, 300).await?;
    assert_eq!(cancelled["unprocessed"], 300);
    let (status, again) = post(&app, &format!("/bulk-actions/{scheduled}/cancel")).await?;
    assert_eq!((status, again["status"].as_str()), (200, Some("cancelled")));
    for command in ["pause", "resume"] {
        let (status, body) = post(&app, &format!("/bulk-actions/{scheduled}/{command}")).await?;
        assert_eq!((status, code(&body)), (409, "action_finished"), "{command}");
    }
    assert_eq!(contacts_of(&app, "sched").await?, 0);

    // Running, and queued behind it in the same account (an account's actions go in order).
    let running = app.submit(&create("busy", 0..1000)).await?;
    let queued = app.submit(&create("busy", 1000..2000)).await?;
    wait_status(&app, &running, "running").await?;
    assert_eq!(view(&app, &queued).await?["status"], "queued");
    let (_, body) = post(&app, &format!("/bulk-actions/{queued}/pause")).await?;
    assert_eq!(body["status"], "paused");
    let (_, body) = post(&app, &format!("/bulk-actions/{queued}/resume")).await?;
    assert_eq!(body["status"], "queued");

    // A paused action makes no progress and takes no budget: its account's next action runs.
    let (_, body) = post(&app, &format!("/bulk-actions/{running}/pause")).await?;
    assert_eq!(body["status"], "paused");
    tokio::time::sleep(Duration::from_millis(1500)).await; // batches in flight settle
    let held = view(&app, &running).await?["processedRecords"].clone();
    wait_status(&app, &queued, "running").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = view(&app, &running).await?;
    assert_eq!(still["processedRecords"], held, "no progress while paused");
    assert_eq!(still["status"], "paused");
    let (status, body) = post(&app, &format!("/bulk-actions/{queued}/cancel")).await?;
    assert_eq!((status, body["status"].as_str()), (200, Some("cancelling")));
    let (status, body) = post(&app, &format!("/bulk-actions/{queued}/pause")).await?;
    assert_eq!((status, code(&body)), (409, "action_cancelling"));
    let queued_done = assert_cancelled(&app, &queued, 1000).await?;

    let (_, body) = post(&app, &format!("/bulk-actions/{running}/resume")).await?;
    assert_eq!(body["status"], "running");
    let deadline = Instant::now() + WAIT;
    while view(&app, &running).await?["processedRecords"] == held {
        ensure!(Instant::now() < deadline, "no progress after resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = post(&app, &format!("/bulk-actions/{running}/cancel")).await?;
    assert_eq!(status, 200);
    let running_done = assert_cancelled(&app, &running, 1000).await?;
    assert!(
        running_done["unprocessed"].as_u64() > Some(0),
        "{running_done}"
    );
    assert_eq!(
        contacts_of(&app, "busy").await?,
        running_done["succeeded"].as_u64().unwrap_or(0)
            + queued_done["succeeded"].as_u64().unwrap_or(0)
    );

    // Views rebuilt from the streams alone are the same.
    let views_before = app.all_docs(infra::mongo::ACTION_VIEWS).await?;
    app.replay().await?;
    assert_eq!(
        app.all_docs(infra::mongo::ACTION_VIEWS).await?,
        views_before
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_moves_a_start_and_paces_an_action() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn(AppOptions {
        batch_size: 100,
        ..AppOptions::default()
    })
    .await?;
    let mut body = create("p", 0..200);
    body["scheduledFor"] = json!(at_offset(3_600_000));
    let action = app.submit(&body).await?;
    for (patch_body, status, expected) in [
        (json!({}), 400, "empty_patch"),
        (json!({ "name": "x" }), 400, "unknown_field"),
        (json!([1]), 400, "invalid_body"),
        (
            json!({ "scheduledFor": "2001-01-01T00:00:00Z" }),
            400,
            "scheduled_for_in_past",
        ),
        (
            json!({ "scheduledFor": null }),
            400,
            "invalid_scheduled_for",
        ),
        (
            json!({ "pacing": { "batchSize": 0, "intervalSeconds": 1 } }),
            400,
            "invalid_pacing",
        ),
        (
            json!({ "maxRecordsPerMinute": { "$gt": 1 } }),
            400,
            "invalid_pacing",
        ),
    ] {
        let (got, reply) = patch(&app, &action, patch_body.clone()).await?;
        assert_eq!((got, code(&reply)), (status, expected), "{patch_body}");
    }

    // Move the start close, and drip 50 records a second: the two 100-record batches go
    // two seconds apart.
    let start = at_offset(1_500);
    let (status, moved) = patch(
        &app,
        &action,
        json!({ "scheduledFor": start, "pacing": { "batchSize": 50, "intervalSeconds": 1 } }),
    )
    .await?;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["status"], "scheduled");
    assert_eq!(moved["scheduledFor"], json!(start));
    assert_eq!(
        moved["pacing"],
        json!({ "batchSize": 50, "intervalSeconds": 1 })
    );
    let done = app.wait_projected_terminal(&action, WAIT).await?;
    assert_eq!(done["succeeded"], 200);
    let late = millis(&done, "startedAt")? - millis(&done, "scheduledFor")?;
    assert!(
        (0..1000).contains(&late),
        "started {late} ms after its time"
    );
    let settles = settle_times(app.redis_url(), app.keys(), &action).await?;
    assert_eq!(settles.len(), 2);
    let gap = settles[1].0 - settles[0].0;
    assert!(gap >= 1_600, "the drip let two batches go {gap} ms apart");
    let (status, body) = patch(&app, &action, json!({ "maxRecordsPerMinute": 10 })).await?;
    assert_eq!((status, code(&body)), (409, "action_finished"));

    // A start that has come cannot move.
    let mut body = create("p2", 0..10);
    body["scheduledFor"] = json!(at_offset(300));
    let released = app.submit(&body).await?;
    app.wait_projected_terminal(&released, WAIT).await?;
    let mut body = create("p3", 0..10);
    body["scheduledFor"] = json!(at_offset(200));
    body["pacing"] = json!({ "batchSize": 1, "intervalSeconds": 3600 });
    let dripping = app.submit(&body).await?;
    wait_status(&app, &dripping, "running").await?;
    let (status, body) = patch(
        &app,
        &dripping,
        json!({ "scheduledFor": at_offset(60_000) }),
    )
    .await?;
    assert_eq!((status, code(&body)), (409, "action_already_released"));
    // One record an hour: lift the pace and it finishes.
    let (status, body) = patch(&app, &dripping, json!({ "pacing": null })).await?;
    assert_eq!(
        (status, body["pacing"].clone()),
        (200, Value::Null),
        "{body}"
    );
    let done = app.wait_projected_terminal(&dripping, WAIT).await?;
    assert_eq!(
        (done["succeeded"].as_u64(), done["batchCount"].as_u64()),
        (Some(10), Some(10))
    );

    // A pace given at submission: 3 batches of 100 at 100 records per second.
    let mut body = create("p4", 0..300);
    body["maxRecordsPerMinute"] = json!(6_000);
    let capped = app.submit(&body).await?;
    app.wait_projected_terminal(&capped, WAIT).await?;
    let settles = settle_times(app.redis_url(), app.keys(), &capped).await?;
    let span = settles[2].0 - settles[0].0;
    assert!(span >= 1_700, "300 records at 100/s took {span} ms");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_actions_start_within_a_second_of_their_time() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn(AppOptions::default()).await?;
    let mut actions = Vec::new();
    for i in 0..40 {
        let mut body = create(&format!("s{i}"), 0..5);
        body["scheduledFor"] = json!(at_offset(2_000 + i * 100));
        actions.push(app.submit(&body).await?);
    }
    let mut lateness = Vec::new();
    for action in &actions {
        let done = app.wait_projected_terminal(action, WAIT).await?;
        assert_eq!(done["succeeded"], 5);
        let scheduled = millis(&done, "scheduledFor")?;
        assert!(
            millis(&done, "queuedAt")? >= scheduled,
            "released early: {done}"
        );
        lateness.push(millis(&done, "startedAt")? - scheduled);
    }
    lateness.sort_unstable();
    let p50 = lateness[lateness.len() / 2];
    let p99 = lateness[(lateness.len() * 99).div_ceil(100) - 1];
    println!(
        "scheduled start lateness over 40 actions: p50 {p50} ms, p99 {p99} ms, max {} ms",
        lateness[39]
    );
    assert!(lateness[0] >= 0, "an action started before its time");
    assert!(p99 < 1_000, "p99 lateness {p99} ms");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accounts_backlog_does_not_delay_another_account() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn(AppOptions {
        consumers: 2,
        batch_size: 500,
        max_records_per_action: 200_000,
        max_body_bytes: 32 * 1024 * 1024,
        ..AppOptions::default()
    })
    .await?;
    // What 1,000 records take on an idle system.
    let alone = app.submit(&create("alone", 0..1000)).await?;
    let alone = app.wait_projected_terminal(&alone, WAIT).await?;
    let baseline = millis(&alone, "completedAt")? - millis(&alone, "createdAt")?;

    let big = app.submit(&create("big", 0..200_000)).await?;
    let deadline = Instant::now() + WAIT;
    while view(&app, &big).await?["batchesProcessed"].as_u64() < Some(4) {
        ensure!(Instant::now() < deadline, "the big action did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let big_before = view(&app, &big).await?["processedRecords"]
        .as_u64()
        .unwrap_or(0);
    let small = app.submit(&create("small", 0..1000)).await?;
    let small = app.wait_projected_terminal(&small, WAIT).await?;
    let took = millis(&small, "completedAt")? - millis(&small, "createdAt")?;
    let big_view = view(&app, &big).await?;
    let big_after = big_view["processedRecords"].as_u64().unwrap_or(0);
    println!(
        "1,000 records alone: {baseline} ms; behind a 200,000-record backlog: {took} ms; \
         the backlog went on from {big_before} to {big_after} records meanwhile"
    );
    assert_eq!(small["succeeded"], 1000);
    assert_eq!(
        big_view["status"], "running",
        "the backlog must still be there"
    );
    assert!(
        big_after > big_before,
        "the big account kept making progress"
    );
    assert!(
        took <= 3 * baseline + 2_000,
        "the small action took {took} ms, alone {baseline} ms"
    );

    // Cancelling the rest of a large running action.
    let (status, _) = post(&app, &format!("/bulk-actions/{big}/cancel")).await?;
    assert_eq!(status, 200);
    let big_done = assert_cancelled(&app, &big, 200_000).await?;
    assert_eq!(
        contacts_of(&app, "big").await?,
        big_done["succeeded"].as_u64().unwrap_or(0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumer_processes_hold_the_processing_limit_within_two_percent() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::start(
        DeploymentOptions {
            batch_size: 100,
            env: vec![("ADMIN_TOKEN", "s3cret-admin".into())],
            ..DeploymentOptions::default()
        },
        &["c1", "c2"],
    )
    .await?;
    let client = &deployment.client;
    // The account's own limit, set through the admin api: 30,000 a minute, 500 a second.
    let limits = client
        .send(
            Method::PUT,
            "/admin/accounts/metered/limits",
            Some(&json!({ "recordsPerMinute": 30_000 })),
            &[("authorization", "Bearer s3cret-admin")],
        )
        .await?;
    assert_eq!(limits.status, 200, "{:?}", limits.body);
    assert_eq!(limits.body["recordsPerMinute"], 30_000);
    let action = client.submit(&create("metered", 0..15_000)).await?;
    // Another account, without a limit of its own, is not held back meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let free = client.submit(&create("free", 0..5_000)).await?;
    let free = client.wait_projected_terminal(&free, WAIT).await?;
    let free_took = millis(&free, "completedAt")? - millis(&free, "createdAt")?;
    assert_eq!(view(client, &action).await?["status"], "running");

    let done = client.wait_projected_terminal(&action, WAIT).await?;
    assert_eq!(done["succeeded"], 15_000);
    let settles = settle_times(&deployment.redis_url(), deployment.keys(), &action).await?;
    let consumers: BTreeSet<&str> = settles
        .iter()
        .map(|(_, _, consumer)| consumer.split('-').next().unwrap_or(""))
        .collect();
    assert_eq!(
        consumers.len(),
        2,
        "both processes applied batches: {consumers:?}"
    );
    let first = settles.first().context("settled batches")?;
    let last = settles.last().context("settled batches")?;
    let after_first: usize = settles[1..].iter().map(|(_, records, _)| records).sum();
    let seconds = (last.0 - first.0) as f64 / 1000.0;
    let rate = after_first as f64 / seconds;
    println!(
        "processing rate across two consumers: {rate:.1} records/s against a limit of 500/s \
         over {seconds:.1} s; meanwhile 5,000 records of another account took {free_took} ms"
    );
    ensure!(
        (rate / 500.0 - 1.0).abs() <= 0.02,
        "rate {rate:.1}/s is not within 2% of 500/s"
    );
    ensure!(
        free_took < 10_000,
        "the unlimited account took {free_took} ms"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_share_one_request_budget() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut deployment = Deployment::start(
        DeploymentOptions {
            requests_per_minute: 120,
            env: vec![
                ("RATE_LIMIT_REQUEST_BURST_SECONDS", "10".into()),
                ("ADMIN_TOKEN", "s3cret-admin".into()),
            ],
            ..DeploymentOptions::default()
        },
        &["c1"],
    )
    .await?;
    let second = deployment.start_another_api().await?;
    let first = deployment.client.clone();
    let list = "/bulk-actions?accountId=acme";

    // 120 a minute with a 10 s burst: 20 pass at once, then one every 500 ms.
    let mut replies = Vec::new();
    for i in 0..40 {
        let client = if i % 2 == 0 { &first } else { &second };
        replies.push(client.send(Method::GET, list, None, &[]).await?);
    }
    let allowed = replies.iter().filter(|reply| reply.status == 200).count();
    assert!((20..=22).contains(&allowed), "{allowed} of 40 allowed");
    assert!(replies
        .iter()
        .all(|reply| matches!(reply.status, 200 | 429)));
    let opening = &replies[0];
    assert_eq!(
        opening.header("ratelimit-policy"),
        Some("\"per-minute\";q=120;w=60")
    );
    assert_eq!(opening.header("ratelimit"), Some("\"per-minute\";r=19;t=1"));
    assert_eq!(opening.header("ratelimit-limit"), Some("120"));
    assert_eq!(opening.header("ratelimit-remaining"), Some("19"));
    assert_eq!(opening.header("ratelimit-reset"), Some("1"));
    let refused = replies
        .iter()
        .find(|reply| reply.status == 429)
        .context("a 429")?;
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert_eq!(code(&refused.body), "rate_limited");
    assert_eq!(refused.body["error"]["details"]["policy"], "per-minute");
    assert_eq!(refused.body["error"]["details"]["limit"], 120);
    // Another account has its own budget.
    let other = second
        .send(Method::GET, "/bulk-actions?accountId=other", None, &[])
        .await?;
    assert_eq!(other.status, 200);
    // Waiting as told is enough.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(second.send(Method::GET, list, None, &[]).await?.status, 200);

    // Admin: the token is required, then the account's own limit applies at once.
    let path = "/admin/accounts/acme/limits";
    let none = first.send(Method::GET, path, None, &[]).await?;
    assert_eq!((none.status, code(&none.body)), (401, "unauthorized"));
    let wrong = first
        .send(Method::GET, path, None, &[("authorization", "Bearer nope")])
        .await?;
    assert_eq!(wrong.status, 401);
    let admin = [("authorization", "Bearer s3cret-admin")];
    let limits = first.send(Method::GET, path, None, &admin).await?;
    assert_eq!(limits.status, 200);
    assert_eq!(limits.body["requestsPerMinute"], 120);
    assert_eq!(limits.body["overrides"]["requestsPerMinute"], Value::Null);
    let set = first
        .send(
            Method::PUT,
            path,
            Some(&json!({ "requestsPerMinute": 60_000, "recordsPerMinute": 5_000 })),
            &admin,
        )
        .await?;
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_eq!(set.body["overrides"]["requestsPerMinute"], 60_000);
    for _ in 0..30 {
        let reply = second.send(Method::GET, list, None, &[]).await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit-limit"), Some("60000"));
    }
    let bad = first
        .send(
            Method::PUT,
            path,
            Some(&json!({ "requestsPerMinute": 0 })),
            &admin,
        )
        .await?;
    assert_eq!((bad.status, code(&bad.body)), (400, "invalid_field"));
    drop(deployment);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_survives_restarting_every_process_and_redis() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut deployment = Deployment::start(DeploymentOptions::default(), &["c1"]).await?;
    let mut body = create("later", 0..500);
    body["scheduledFor"] = json!(at_offset(8_000));
    let action = deployment.client.submit(&body).await?;
    // Redis appends to its AOF every second: give it that second before the crash.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    deployment.kill_api();
    deployment.kill_consumer("c1");
    deployment.kill_projector();
    deployment.services.kill_redis();
    tokio::time::sleep(Duration::from_millis(500)).await;
    deployment.services.start_redis_again()?;
    deployment.start_projector()?;
    deployment.start_consumer("c1")?;
    deployment.start_api()?;
    deployment.wait_ready(WAIT).await?;
    assert_eq!(
        view(&deployment.client, &action).await?["status"],
        "scheduled"
    );
    let done = deployment
        .client
        .wait_projected_terminal(&action, WAIT)
        .await?;
    assert_eq!(done["succeeded"], 500);
    let late = millis(&done, "startedAt")? - millis(&done, "scheduledFor")?;
    println!("after a restart of everything, the action started {late} ms after its time");
    assert!(
        (0..1000).contains(&late),
        "started {late} ms after its time"
    );
    let contacts = deployment
        .client
        .all_docs(infra::mongo::CONTACTS)
        .await?
        .len();
    assert_eq!(contacts, 500);
    Ok(())
}

/// A benchmark, not part of the suite: the default limit (10,000 records a minute) held by
/// two consumer processes over a five-minute window.
/// `cargo test -p bulk-tests --test flow -- --ignored --nocapture five_minute`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes six minutes; see docs/benchmarks.md"]
async fn five_minute_window_at_the_default_limit() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::start(
        DeploymentOptions {
            batch_size: 100,
            records_per_minute: 10_000,
            ..DeploymentOptions::default()
        },
        &["c1", "c2"],
    )
    .await?;
    let action = deployment
        .client
        .submit(&create("steady", 0..60_000))
        .await?;
    tokio::time::sleep(Duration::from_secs(305)).await;
    let settles = settle_times(&deployment.redis_url(), deployment.keys(), &action).await?;
    let start = settles.first().context("settled batches")?.0;
    let in_window: usize = settles
        .iter()
        .filter(|(at, _, _)| *at < start + 300_000)
        .map(|(_, records, _)| records)
        .sum();
    println!(
        "records applied in the first 300 s: {in_window} against a limit of 50,000 ({:+.2}%)",
        (in_window as f64 / 50_000.0 - 1.0) * 100.0
    );
    ensure!(
        (in_window as f64 / 50_000.0 - 1.0).abs() <= 0.02,
        "{in_window} records in five minutes"
    );
    Ok(())
}

/// Two api processes behind one load balancer share nothing but Redis and MongoDB: an
/// action submitted through one is read, replayed, paused, resumed and cancelled through
/// the other, and answers agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_serve_the_same_action() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut deployment = Deployment::start(
        DeploymentOptions {
            batch_size: 100,
            records_per_minute: 6_000,
            ..DeploymentOptions::default()
        },
        &["c1"],
    )
    .await?;
    let second = deployment.start_another_api().await?;
    let first = deployment.client.clone();
    let body = create("shared", 0..2_000);
    let key = first.key_for("shared").await?;
    let headers = [
        ("authorization", format!("Bearer {key}")),
        ("idempotency-key", "import-42".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let submitted = first
        .send(Method::POST, "/bulk-actions", Some(&body), &headers)
        .await?;
    assert_eq!(submitted.status, 202, "{}", submitted.body);
    let action = submitted.body["actionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Read your own write through the other instance, at once.
    let (status, seen) = second.get_json(&format!("/bulk-actions/{action}")).await?;
    assert_eq!(
        (status, seen["actionId"].as_str()),
        (200, Some(action.as_str()))
    );
    // The same Idempotency-Key through the other instance is the same action.
    let replayed = second
        .send(Method::POST, "/bulk-actions", Some(&body), &headers)
        .await?;
    assert_eq!(replayed.status, 202);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.body["actionId"], json!(action));
    // Control through one, observed through the other.
    wait_status(&first, &action, "running").await?;
    let (_, paused) = post(&second, &format!("/bulk-actions/{action}/pause")).await?;
    assert_eq!(paused["status"], "paused");
    assert_eq!(view(&first, &action).await?["status"], "paused");
    let (_, resumed) = post(&first, &format!("/bulk-actions/{action}/resume")).await?;
    assert_eq!(resumed["status"], "running");
    let (status, _) = post(&second, &format!("/bulk-actions/{action}/cancel")).await?;
    assert_eq!(status, 200);
    let done = first.wait_projected_terminal(&action, WAIT).await?;
    assert_eq!(done["status"], "cancelled");
    let (_, through_second) = second.get_json(&format!("/bulk-actions/{action}")).await?;
    assert_eq!(through_second, done);
    assert_eq!(
        done["succeeded"].as_u64().unwrap_or(0) + done["unprocessed"].as_u64().unwrap_or(0),
        2_000
    );
    Ok(())
}

/// A benchmark, not part of the suite: every batch waits 200 ms on a simulated downstream
/// api, so throughput is bound by how many batches are in flight, not by the store; 1, 2
/// and 4 consumer processes of 4 workers each should scale it about linearly.
/// `cargo test -p bulk-tests --test flow -- --ignored --nocapture consumers_scale`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark of about a minute; see docs/benchmarks.md"]
async fn consumers_scale_out_when_batches_wait_on_a_slow_downstream() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let records = 8_000;
    let mut rates = Vec::new();
    for processes in [1usize, 2, 4] {
        let names: Vec<String> = (0..processes).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let deployment = Deployment::start(
            DeploymentOptions {
                batch_size: 20,
                consumer_concurrency: 4,
                env: vec![("SIMULATED_BATCH_LATENCY_MS", "200".into())],
                ..DeploymentOptions::default()
            },
            &names,
        )
        .await?;
        // Every consumer announces its workers before the dispatch sizes the queue by them.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let action = deployment
            .client
            .submit(&create(&format!("scale{processes}"), 0..records))
            .await?;
        let done = deployment
            .client
            .wait_projected_terminal(&action, WAIT)
            .await?;
        ensure!(done["succeeded"] == records, "{done}");
        let settles = settle_times(&deployment.redis_url(), deployment.keys(), &action).await?;
        let first = settles.first().context("settles")?.0;
        let last = settles.last().context("settles")?.0;
        let after_first: usize = settles[1..].iter().map(|(_, n, _)| n).sum();
        let rate = after_first as f64 * 1000.0 / (last - first) as f64;
        println!("{processes} consumer process(es), 4 workers each: {rate:.0} records/s");
        rates.push(rate);
    }
    let (two, four) = (rates[1] / rates[0], rates[2] / rates[0]);
    println!("scaling: 2 processes {two:.2}x, 4 processes {four:.2}x of one");
    ensure!(two >= 1.8 && four >= 3.4, "scaling {two:.2}x / {four:.2}x");
    Ok(())
}

/// A measurement, not part of the suite: what an action leaves in Redis once it is done.
/// Work entries and batch payloads are removed as batches settle; the event stream stays
/// (replay needs it).
/// `cargo test -p bulk-tests --test flow -- --ignored --nocapture redis_bytes`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; see docs/benchmarks.md"]
async fn redis_bytes_per_record_of_a_finished_action() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::start(DeploymentOptions::default(), &["c1"]).await?;
    let mut conn = infra::redis_conn::shared(&deployment.redis_url()).await?;
    let keys = deployment.keys();
    for records in [10_000usize, 100_000] {
        let action = deployment
            .client
            .submit(&create(&format!("mem{records}"), 0..records))
            .await?;
        deployment
            .client
            .wait_projected_terminal(&action, WAIT)
            .await?;
        let id = ActionId::parse(&action).context("ulid")?;
        let bytes = |key: String| {
            let mut conn = conn.clone();
            async move {
                let used: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut conn)
                    .await?;
                anyhow::Ok(used.unwrap_or(0))
            }
        };
        let events = bytes(keys.events(id)).await?;
        let meta = bytes(keys.meta(id)).await?;
        let batches = bytes(keys.batches(id)).await?;
        let work: u64 = {
            let mut total = 0;
            for partition in keys.partitions() {
                total +=
                    redis::AsyncCommands::xlen::<_, u64>(&mut conn, keys.work(partition)).await?;
            }
            total
        };
        println!(
            "{records} records: event stream {events} bytes ({:.1} per record), meta {meta} bytes, \
             batch payloads left {batches} bytes, work entries left {work}",
            events as f64 / records as f64
        );
        ensure!(batches == 0 && work == 0, "work left behind");
    }
    Ok(())
}

/// The rules the scripts apply themselves (`lua/lib.lua`) and their Rust twins give the same
/// answers on the same inputs: GCRA to the bit, a batch's turn and the facts' signature on
/// every combination of the flags.
#[tokio::test]
async fn the_scripts_rules_and_their_rust_twins_agree() -> Result<()> {
    let services = bulk_tests::Services::start()?;
    let client = redis::Client::open(services.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    gcra_twins_agree(&mut conn).await?;
    lifecycle_twins_agree(&mut conn).await
}

async fn lifecycle_twins_agree(conn: &mut redis::aio::MultiplexedConnection) -> Result<()> {
    use domain::lifecycle::{Facts, PaceSource};
    const PACED: &str =
        r#"{"pacing":{"batchSize":7,"intervalSeconds":2},"maxRecordsPerMinute":90}"#;

    let script = redis::Script::new(&format!(
        "{}\n{}",
        infra::scripts::LIBRARY,
        r#"
local f = call('HMGET', KEYS[1], 'paused', 'cancelled')
return {batch_turn(f[1], f[2]), lifecycle_signature(KEYS[1], KEYS[2], ARGV[1])}"#
    ));
    let flags = [None, Some("0"), Some("1")];
    let mut cases = 0;
    for paused in flags {
        for cancelled in flags {
            for (batches, settled) in [(3u32, 0u32), (3, 2), (3, 3), (3, 4)] {
                for (scheduled, pace) in [(false, None), (true, None), (false, Some(PACED))] {
                    let _: () = redis::cmd("DEL")
                        .arg(&["twin:meta", "twin:schedule"])
                        .query_async(conn)
                        .await?;
                    let mut fields = vec![("batches", batches.to_string())];
                    fields.push(("done", settled.to_string()));
                    fields.extend(paused.map(|value| ("paused", value.to_owned())));
                    fields.extend(cancelled.map(|value| ("cancelled", value.to_owned())));
                    fields.extend(pace.map(|json| ("pace", json.to_owned())));
                    let _: () = redis::cmd("HSET")
                        .arg("twin:meta")
                        .arg(&fields)
                        .query_async(conn)
                        .await?;
                    if scheduled {
                        let _: () = redis::cmd("ZADD")
                            .arg(&["twin:schedule", "1", "twin"])
                            .query_async(conn)
                            .await?;
                    }
                    let (turn, signature): (String, String) = script
                        .key("twin:meta")
                        .key("twin:schedule")
                        .arg("twin")
                        .invoke_async(conn)
                        .await?;
                    let facts = Facts {
                        batches,
                        settled,
                        paused: paused == Some("1"),
                        cancelled: cancelled == Some("1"),
                        scheduled,
                        pace: match pace {
                            Some(json) => serde_json::from_str(json)?,
                            None => domain::lifecycle::Pace::default(),
                        },
                        pace_source: match pace {
                            Some(_) => PaceSource::Meta,
                            None => PaceSource::Events,
                        },
                    };
                    ensure!(
                        (turn.as_str(), signature.as_str())
                            == (facts.batch_turn().name(), facts.signature().as_str()),
                        "{fields:?} scheduled {scheduled}: lua ({turn}, {signature}), rust {facts:?}"
                    );
                    cases += 1;
                }
            }
        }
    }
    ensure!(cases == 108);
    Ok(())
}

/// GCRA to the bit, edge cases and random ones alike.
async fn gcra_twins_agree(conn: &mut redis::aio::MultiplexedConnection) -> Result<()> {
    use domain::rate::gcra;
    use rand::{Rng, SeedableRng};

    let script = redis::Script::new(&format!(
        "{}\n{}",
        infra::scripts::LIBRARY,
        r#"
local a = {}
for i = 1, #ARGV do a[i] = tonumber(ARGV[i]) end
local function bits(x) return string.format('%.17g', x) end
return {
  bits(gcra_charge(a[1], a[2], a[3], a[5])),
  bits(gcra_ready_at(a[1], a[2], a[3], a[4], a[5])),
  bits(gcra_refund(a[1], a[3], a[5])),
  bits(gcra_rescale(a[1], a[2], a[5], a[6])),
}"#
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut cases: Vec<[f64; 6]> = vec![
        [0.0, 1_733_100_000_000.0, 1.0, 1.0, 6.0, 3.0],
        [
            1_733_100_000_500.5,
            1_733_100_000_000.25,
            1000.0,
            100.0,
            0.006,
            0.06,
        ],
        [
            1_733_100_000_000.0,
            1_733_100_000_000.0,
            7.0,
            7.0,
            60_000.0,
            1.0,
        ],
    ];
    for _ in 0..300 {
        let now = 1_733_100_000_000.0 + rng.random_range(0.0..1e9);
        cases.push([
            if rng.random_bool(0.2) {
                0.0
            } else {
                now + rng.random_range(-1e6..1e6)
            },
            now,
            f64::from(rng.random_range(1u32..10_000)),
            f64::from(rng.random_range(1u32..10_000)),
            60_000.0 / f64::from(rng.random_range(1u32..10_000_000)),
            60_000.0 / f64::from(rng.random_range(1u32..10_000_000)),
        ]);
    }
    for [tat, now, cost, burst, interval, new_interval] in cases {
        let mut invocation = script.prepare_invoke();
        for value in [tat, now, cost, burst, interval, new_interval] {
            invocation.arg(format!("{value:.17e}"));
        }
        let lua: Vec<String> = invocation.invoke_async(conn).await?;
        let rust = [
            gcra::charge(tat, now, cost, interval),
            gcra::ready_at(tat, now, cost, burst, interval),
            gcra::refund(tat, cost, interval),
            gcra::rescale(tat, now, interval, new_interval),
        ];
        let lua: Vec<f64> = lua.iter().map(|x| x.parse()).collect::<Result<_, _>>()?;
        ensure!(
            lua == rust,
            "inputs {:?}: lua {lua:?} != rust {rust:?}",
            [tat, now, cost, burst, interval, new_interval]
        );
    }
    Ok(())
}

/// Two PATCHes of different parts of the pace, racing, and each round right after the one
/// before (before the projector has caught up): each change keeps what it leaves out, so
/// no recorded pace undoes another request's part, and the last pace has both last parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_changes_of_pace_keep_each_others_parts() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn(AppOptions::default()).await?;
    let mut body = create("repace", 0..100);
    body["scheduledFor"] = json!(at_offset(3_600_000));
    let action = app.submit(&body).await?;
    const ROUNDS: u32 = 15;
    for round in 1..=ROUNDS {
        let pacing = json!({ "pacing": { "batchSize": round, "intervalSeconds": 1 } });
        let max = json!({ "maxRecordsPerMinute": 1000 + round });
        let (a, b) = tokio::join!(
            patch(&app.client, &action, pacing),
            patch(&app.client, &action, max)
        );
        for (status, reply) in [a?, b?] {
            ensure!(status == 200, "round {round}: {status} {reply}");
        }
    }
    let paces: Vec<(Option<u32>, Option<u32>)> = events(app.redis_url(), app.keys(), &action)
        .await?
        .into_iter()
        .filter_map(|event| match event.envelope.payload {
            EventPayload::PacingChanged {
                pacing,
                max_records_per_minute,
                ..
            } => Some((pacing.map(|p| p.batch_size), max_records_per_minute)),
            _ => None,
        })
        .collect();
    ensure!(paces.len() == 2 * ROUNDS as usize, "{paces:?}");
    for pair in paces.windows(2) {
        let kept_one = pair[0].0 == pair[1].0 || pair[0].1 == pair[1].1;
        ensure!(
            kept_one,
            "a change undid another's part: {pair:?} in {paces:?}"
        );
    }
    ensure!(
        paces.last() == Some(&(Some(ROUNDS), Some(1000 + ROUNDS))),
        "{paces:?}"
    );
    let view = app
        .client
        .wait_view(&action, WAIT, |view| view["lastSeq"].as_u64() >= Some(31))
        .await?;
    ensure!(
        (
            view["pacing"]["batchSize"].as_u64(),
            view["maxRecordsPerMinute"].as_u64()
        ) == (Some(u64::from(ROUNDS)), Some(u64::from(1000 + ROUNDS))),
        "{view}"
    );
    Ok(())
}

/// An app whose batches go nowhere unless the test hands them out itself.
async fn app_without_consumers() -> Result<TestApp> {
    TestApp::spawn(AppOptions {
        consumers: 0,
        ..AppOptions::default()
    })
    .await
}

async fn store_of(app: &TestApp) -> Result<EventStore> {
    let conn = infra::redis_conn::shared(app.redis_url()).await?;
    Ok(EventStore::new(conn, app.keys()))
}

/// A worker reads its action's turn, then counts the first attempt: a pause or cancel
/// acknowledged in between refuses that attempt (the batch is parked or settled instead),
/// while a batch an attempt has touched is always attempted again. Only the worker that
/// holds a batch parks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_or_cancel_acknowledged_before_the_first_attempt_holds() -> Result<()> {
    use domain::lifecycle::BatchTurn;
    use infra::AttemptStart;

    let _serial = SERIAL.lock().await;
    let app = app_without_consumers().await?;
    let action = app.submit(&create("turns", 0..300)).await?;
    let id = ActionId::parse(&action).context("a ULID")?;
    let settlement = infra::Settlement::new(store_of(&app).await?);
    let item = |batch| infra::work::WorkItem {
        stream: app.keys().work(app.keys().partition_of(id)),
        entry_id: "0-1".into(),
        action_id: id,
        batch,
    };
    let command = |verb: &'static str| {
        let client = app.client.clone();
        let path = format!("/bulk-actions/{action}/{verb}");
        async move { post(&client, &path).await }
    };

    ensure!(settlement.begin_attempt(&item(0)).await? == AttemptStart::Began(1));
    ensure!(command("pause").await?.0 == 200);
    ensure!(
        settlement.begin_attempt(&item(1)).await? == AttemptStart::Refused(BatchTurn::Hold),
        "a paused action's untouched batch"
    );
    ensure!(settlement.begin_attempt(&item(0)).await? == AttemptStart::Began(2));

    // A batch handed to worker `a` is parked by `a`, not by a worker that no longer holds
    // it (one that stalled past the claim idle time while `a` took it over).
    let mut conn = infra::redis_conn::shared(app.redis_url()).await?;
    let work = item(1).stream;
    let group = infra::keys::CONSUMER_GROUP;
    infra::work::ensure_groups(&mut conn, std::slice::from_ref(&work), group).await?;
    let entry_id: String = redis::cmd("XADD")
        .arg(&work)
        .arg("*")
        .arg(&["action", action.as_str(), "batch", "1"])
        .query_async(&mut conn)
        .await?;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            group,
            "a",
            "COUNT",
            "1",
            "STREAMS",
            work.as_str(),
            ">",
        ])
        .query_async(&mut conn)
        .await?;
    let handed = infra::work::WorkItem {
        entry_id,
        ..item(1)
    };
    let account = domain::AccountId::parse("turns").context("an account id")?;
    ensure!(
        settlement
            .park(&handed, "b", &account, 100, 1_000_000)
            .await?
            .is_none(),
        "parked by a worker that does not hold it"
    );
    ensure!(
        settlement
            .park(&handed, "a", &account, 100, 1_000_000)
            .await?
            == Some(BatchTurn::Hold)
    );

    ensure!(command("cancel").await?.0 == 200);
    ensure!(
        settlement.begin_attempt(&item(2)).await?
            == AttemptStart::Refused(BatchTurn::SettleUnprocessed),
        "a cancelled action's untouched batch"
    );
    ensure!(
        settlement.begin_attempt(&item(0)).await? == AttemptStart::Began(3),
        "a touched batch is attempted to the end, whatever the action's turn"
    );
    Ok(())
}

/// An account that leaves the accounts with work and joins again (a pause and a resume of
/// its only action) joins behind the accounts waiting: toggling is no way to the front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_account_joins_behind_the_accounts_waiting() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let app = app_without_consumers().await?;
    let keys = app.keys();
    let account = |name: &str| domain::AccountId::parse(name).context("an account id");
    let partition = keys.account_partition(&account("steady")?);
    let mut toggler = None;
    for name in (0..100).map(|i| format!("toggler{i}")) {
        if keys.account_partition(&account(&name)?) == partition {
            toggler = Some(name);
            break;
        }
    }
    let toggler = toggler.context("no account name in the partition")?;
    app.submit(&create("steady", 0..500)).await?;
    let toggled = app.submit(&create(&toggler, 0..500)).await?;

    let scheduling = infra::Scheduling::new(store_of(&app).await?);
    let limits = infra::flow::DispatchLimits {
        default_records_per_minute: 100_000_000,
        burst_seconds: 0,
        max_outstanding: 100,
        max_grants: 1,
    };
    const GRANTS: usize = 4;
    for _ in 0..GRANTS {
        for verb in ["pause", "resume"] {
            let (status, body) =
                post(&app.client, &format!("/bulk-actions/{toggled}/{verb}")).await?;
            ensure!(status == 200, "{verb}: {status} {body}");
        }
        ensure!(scheduling.dispatch(partition, limits).await?.granted == 1);
    }
    let mut conn = infra::redis_conn::shared(app.redis_url()).await?;
    let work: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.work(partition))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let toggled_grants = work
        .ids
        .iter()
        .filter(|entry| entry.get::<String>("action").as_deref() == Some(toggled.as_str()))
        .count();
    ensure!(
        work.ids.len() == GRANTS && toggled_grants <= GRANTS / 2,
        "the toggling account took {toggled_grants} of {} batches handed out",
        work.ids.len()
    );
    Ok(())
}

/// The api decides each command on facts read a moment before, and the scripts record it
/// only if the facts are still the ones read: racing commands never record what the facts
/// no longer allow (a second `Paused` in a row, or anything after a cancel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commands_record_only_what_the_facts_allow() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn(AppOptions {
        batch_size: 100,
        ..AppOptions::default()
    })
    .await?;
    let mut body = create("race", 0..300);
    // Scheduled an hour ahead: no batch settles meanwhile, only the commands change it.
    body["scheduledFor"] = json!(at_offset(3_600_000));
    let action = app.submit(&body).await?;

    let command = |verb: &'static str| {
        let client = app.client.clone();
        let path = format!("/bulk-actions/{action}/{verb}");
        async move { post(&client, &path).await }
    };
    let toggles = (0..40).map(|i| command(if i % 2 == 0 { "pause" } else { "resume" }));
    for (status, body) in futures::future::join_all(toggles)
        .await
        .into_iter()
        .flatten()
    {
        ensure!(status == 200, "{status} {body}");
    }
    let racing_cancel = (0..20).map(|i| command(if i % 2 == 0 { "cancel" } else { "pause" }));
    for (status, body) in futures::future::join_all(racing_cancel)
        .await
        .into_iter()
        .flatten()
    {
        ensure!(
            status == 200 || (status == 409 && code(&body) == "action_cancelling"),
            "{status} {body}"
        );
    }

    let types: Vec<&'static str> = events(app.redis_url(), app.keys(), &action)
        .await?
        .iter()
        .map(|event| event.envelope.payload.type_name())
        .filter(|name| ["Paused", "Resumed", "CancelRequested"].contains(name))
        .collect();
    let (before, after) = types.split_at(
        types
            .iter()
            .position(|name| *name == "CancelRequested")
            .context("no CancelRequested")?,
    );
    ensure!(after == ["CancelRequested"], "after the cancel: {after:?}");
    for (i, name) in before.iter().enumerate() {
        let expected = if i % 2 == 0 { "Paused" } else { "Resumed" };
        ensure!(*name == expected, "not alternating at {i}: {before:?}");
    }
    wait_status(&app.client, &action, "cancelled").await?;
    Ok(())
}

/// An app without consumers, whose actions have one record per batch.
async fn app_of_single_record_batches() -> Result<TestApp> {
    TestApp::spawn(AppOptions {
        consumers: 0,
        batch_size: 1,
        ..AppOptions::default()
    })
    .await
}

/// Account names `<stem><i>` whose actions live in `partition`.
fn accounts_in(keys: &infra::Keys, stem: &str, partition: u32) -> impl Iterator<Item = String> {
    let keys = keys.clone();
    let stem = stem.to_owned();
    (0..)
        .map(move |i| format!("{stem}{i}"))
        .filter(move |name| {
            domain::AccountId::parse(name).is_ok_and(|id| keys.account_partition(&id) == partition)
        })
}

/// The action of every entry of a partition's work stream, oldest first.
async fn work_actions(app: &TestApp, partition: u32) -> Result<Vec<String>> {
    let mut conn = infra::redis_conn::shared(app.redis_url()).await?;
    let work: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(app.keys().work(partition))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    Ok(work
        .ids
        .iter()
        .filter_map(|entry| entry.get::<String>("action"))
        .collect())
}

/// The dispatcher reads `ready` a page at a time (every key a script touches is declared):
/// one call reaches the accounts of every page, and accounts out of budget filling the
/// first pages never hide an account behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_past_a_page_of_accounts_out_of_budget_are_served() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let app = app_of_single_record_batches().await?;
    let partition = 0;
    let mut names = accounts_in(&app.keys(), "paged", partition);
    const BLOCKED: usize = 150; // more than two pages of 64
    for name in names.by_ref().take(BLOCKED) {
        app.submit(&create(&name, 0..2)).await?;
    }
    let scheduling = infra::Scheduling::new(store_of(&app).await?);
    let limits = infra::flow::DispatchLimits {
        default_records_per_minute: 1,
        burst_seconds: 0,
        max_outstanding: 1_000,
        max_grants: 1_000,
    };
    let first = scheduling.dispatch(partition, limits).await?;
    ensure!(
        first.granted as usize == BLOCKED,
        "one call served {} of {BLOCKED} accounts their first batch",
        first.granted
    );
    let blocked = scheduling.dispatch(partition, limits).await?;
    ensure!(
        blocked.granted == 0 && blocked.wait_ms.is_some_and(|ms| ms > 30_000),
        "accounts out of budget: {blocked:?}"
    );

    let late = names.next().context("one more account name")?;
    let late_action = app.submit(&create(&late, 0..1)).await?;
    let served = scheduling.dispatch(partition, limits).await?;
    ensure!(
        served.granted == 1,
        "the late account behind them: {served:?}"
    );
    let handed = work_actions(&app, partition).await?;
    ensure!(handed.last() == Some(&late_action), "{:?}", handed.last());
    Ok(())
}

/// Every consumer process dispatches every partition: dispatchers that read the same page
/// at once do not serve its accounts twice in a round while accounts behind them wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatchers_racing_over_one_page_serve_each_account_once_a_round() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let app = app_of_single_record_batches().await?;
    let partition = 0;
    const ACCOUNTS: usize = 150;
    for name in accounts_in(&app.keys(), "racing", partition).take(ACCOUNTS) {
        app.submit(&create(&name, 0..3)).await?;
    }
    let limits = infra::flow::DispatchLimits {
        default_records_per_minute: 100_000_000,
        burst_seconds: 60,
        max_outstanding: 10_000,
        max_grants: 37,
    };
    const DISPATCHERS: usize = 4; // 148 grants in all: one round, short of every account
    let mut racing = Vec::new();
    for _ in 0..DISPATCHERS {
        let scheduling = infra::Scheduling::new(store_of(&app).await?);
        racing.push(tokio::spawn(async move {
            scheduling.dispatch(partition, limits).await
        }));
    }
    let mut granted = 0;
    for dispatcher in racing {
        granted += dispatcher.await??.granted;
    }
    let actions = work_actions(&app, partition).await?;
    let distinct: BTreeSet<&String> = actions.iter().collect();
    ensure!(
        granted as usize == actions.len() && actions.len() == DISPATCHERS * 37,
        "{granted} granted, {} handed out",
        actions.len()
    );
    ensure!(
        distinct.len() == actions.len(),
        "{} of {} batches went to accounts served twice in the round",
        actions.len() - distinct.len(),
        actions.len()
    );
    Ok(())
}

/// Every script runs behind the key guard of `lua/lib.lua`: a key not given in KEYS is
/// refused, on one node as on a cluster, so no script can reach past its slot unnoticed.
#[tokio::test]
async fn the_key_guard_refuses_a_key_not_given_in_keys() -> Result<()> {
    let services = bulk_tests::Services::start()?;
    let client = redis::Client::open(services.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let script = infra::scripts::with_library(
        "call('SET', KEYS[1], 'given')\nreturn call('GET', KEYS[1] .. ':derived')",
    );
    let refused: redis::RedisResult<Option<String>> =
        script.key("guard:declared").invoke_async(&mut conn).await;
    let error = match refused {
        Ok(value) => anyhow::bail!("an undeclared key was read: {value:?}"),
        Err(error) => error.to_string(),
    };
    ensure!(
        error.contains("undeclared key guard:declared:derived"),
        "{error}"
    );
    let unknown: redis::RedisResult<()> = infra::scripts::with_library("return call('FLUSHALL')")
        .invoke_async(&mut conn)
        .await;
    ensure!(
        unknown.is_err_and(|error| error.to_string().contains("does not know")),
        "a command the guard cannot check ran"
    );
    // Every key of a command that names several.
    for (shape, body) in [
        ("all", "return call('DEL', KEYS[1], 'guard:other')"),
        ("first two", "return call('RENAME', KEYS[1], 'guard:other')"),
    ] {
        let refused: redis::RedisResult<()> = infra::scripts::with_library(body)
            .key("guard:declared")
            .invoke_async(&mut conn)
            .await;
        ensure!(
            refused.is_err_and(|error| error.to_string().contains("undeclared key guard:other")),
            "a second key ({shape}) went unchecked"
        );
    }
    // The guard's table says where each command names its keys as Redis itself does.
    let library = infra::scripts::LIBRARY;
    let table = library
        .split_once("local KEY_ARGUMENTS = {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(table, _)| table)
        .context("KEY_ARGUMENTS in lib.lua")?;
    let mut checked = 0;
    for entry in table.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (command, shape) = entry.split_once('=').context("NAME = 'shape'")?;
        let (command, shape) = (command.trim(), shape.trim().trim_matches('\''));
        let info: Vec<redis::Value> = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(command)
            .query_async(&mut conn)
            .await?;
        let [redis::Value::Array(info)] = info.as_slice() else {
            anyhow::bail!("COMMAND INFO {command}: {info:?}");
        };
        let key_positions: Vec<i64> = info[3..6]
            .iter()
            .map(|value| redis::from_redis_value(value.clone()))
            .collect::<Result<_, _>>()?;
        let expected: [i64; 3] = match shape {
            "none" => [0, 0, 0],
            "first" => [1, 1, 1],
            "first two" => [1, 2, 1],
            "all" => [1, -1, 1],
            other => anyhow::bail!("{command}: shape {other}"),
        };
        ensure!(
            key_positions == expected,
            "{command} is '{shape}' in the guard, Redis says first/last/step {key_positions:?}"
        );
        checked += 1;
    }
    ensure!(checked >= 30, "{checked} commands in the guard's table");
    let given: Option<String> = infra::scripts::with_library("return call('GET', KEYS[1])")
        .key("guard:declared")
        .invoke_async(&mut conn)
        .await?;
    ensure!(given.as_deref() == Some("given"), "{given:?}");
    Ok(())
}
