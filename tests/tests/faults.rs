//! Fault injection against the real binaries: processes are SIGKILLed and SIGTERMed,
//! redis-server and the MongoDB-compatible server are killed and restarted, all in the
//! middle of actions. Every test ends by checking the contacts themselves, every log line,
//! the event stream and, where views are involved, that a full replay gives the same views.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bulk_tests::{ApiClient, Deployment, DeploymentOptions, ONE_REPLY};
use domain::{ActionId, EventPayload};
use futures::TryStreamExt;
use infra::{EventStore, StoredEvent};
use mongodb::bson::{doc, Bson, Document};
use serde_json::{json, Value};

const STATUSES: [&str; 2] = ["lead", "customer"];
const MAX_KILLS: u32 = 8;

/// One deployment at a time: each is seven processes, and on a 2-core machine several at
/// once would make the timing of every fault meaningless.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn upsert_body(account: &str, records: usize) -> Value {
    let data: Vec<Value> = (0..records)
        .map(|i| json!({ "email": format!("user{i}@{account}.io"), "name": format!("User {i}"), "age": i % 100, "status": STATUSES[i % 2] }))
        .collect();
    json!({ "accountId": account, "entityType": "contact", "actionType": "upsert", "data": data })
}

async fn event_store(deployment: &Deployment) -> Result<EventStore> {
    Ok(EventStore::new(
        infra::redis_conn::shared(&deployment.redis_url()).await?,
        infra::Keys::new("test", 4),
    ))
}

async fn events(deployment: &Deployment, action: &str) -> Result<Vec<StoredEvent>> {
    let action = ActionId::parse(action).expect("the api returns ULIDs");
    Ok(bulk_tests::all_events(&event_store(deployment).await?, action).await?)
}

/// Waits for the projected view to be terminal, polling through outages.
async fn wait_done(client: &ApiClient, action: &str, timeout: Duration) -> Result<Value> {
    client.wait_projected_terminal(action, timeout).await
}

/// What a fault-free upsert of `records` new contacts leaves behind: exact counts, one
/// `created` line per record, every contact with exactly its fields, one `Completed`, one
/// settlement per batch, and no work left in Redis.
async fn assert_exact_upsert(
    deployment: &Deployment,
    account: &str,
    action: &str,
    records: usize,
    batches: usize,
) -> Result<()> {
    let (_, view) = deployment
        .get_json(&format!("/bulk-actions/{action}"))
        .await?;
    ensure!(
        view["status"] == "completed"
            && view["succeeded"] == records
            && view["failed"] == 0
            && view["skipped"] == 0
            && view["processedRecords"] == records
            && view["batchesProcessed"] == batches,
        "view is not exact: {view}"
    );
    // The projected log lines themselves (paging through the API is tested elsewhere and
    // costs a scan per page on FerretDB).
    let logs = deployment.stored_log_lines(action).await?;
    ensure!(logs.len() == records, "{} log lines", logs.len());
    for (i, line) in logs.iter().enumerate() {
        ensure!(
            line.get("index") == Some(&Bson::Int64(i as i64)) && line.get_str("code")? == "created",
            "log line {i}: {line}"
        );
    }
    let contacts: Vec<Document> = deployment
        .contacts()
        .find(doc! { "accountId": account })
        .batch_size(ONE_REPLY)
        .await?
        .try_collect()
        .await?;
    ensure!(contacts.len() == records, "{} contacts", contacts.len());
    let mut seen = BTreeSet::new();
    for contact in &contacts {
        let email = contact.get_str("email")?;
        let i: usize = email
            .trim_start_matches("user")
            .trim_end_matches(&format!("@{account}.io"))
            .parse()?;
        ensure!(seen.insert(i), "contact {i} twice");
        ensure!(contact.get_str("name")? == format!("User {i}"));
        ensure!(contact.get("age") == Some(&Bson::Int64((i % 100) as i64)));
        ensure!(contact.get_str("status")? == STATUSES[i % 2]);
        ensure!(contact.get_str("createdByBulkAction")? == action);
    }

    let events = events(deployment, action).await?;
    let completed = events
        .iter()
        .filter(|e| matches!(e.envelope.payload, EventPayload::Completed {}))
        .count();
    ensure!(completed == 1, "{completed} Completed events");
    let settled: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.envelope.payload {
            EventPayload::BatchProcessed { batch, .. } => Some(*batch),
            _ => None,
        })
        .collect();
    let distinct: BTreeSet<u32> = settled.iter().copied().collect();
    ensure!(
        settled.len() == batches && distinct.len() == batches,
        "{} settlements of {} distinct batches",
        settled.len(),
        distinct.len()
    );
    assert_no_work_left(deployment).await
}

async fn assert_no_work_left(deployment: &Deployment) -> Result<()> {
    let mut conn = infra::redis_conn::shared(&deployment.redis_url()).await?;
    let keys = infra::Keys::new("test", 4);
    for partition in keys.partitions() {
        let length: usize = redis::AsyncCommands::xlen(&mut conn, keys.work(partition)).await?;
        ensure!(
            length == 0,
            "{length} work entries left in partition {partition}"
        );
    }
    Ok(())
}

/// Stops the live projector, replays every stream into empty views, and requires the very
/// same documents.
async fn assert_replay_reproduces_views(deployment: &mut Deployment) -> Result<()> {
    let views = deployment.all_docs(infra::mongo::ACTION_VIEWS).await?;
    let logs = deployment.all_docs(infra::mongo::LOG_VIEWS).await?;
    deployment.kill_projector();
    deployment.replay().await?;
    ensure!(
        views == deployment.all_docs(infra::mongo::ACTION_VIEWS).await?,
        "replayed action views differ"
    );
    ensure!(
        logs == deployment.all_docs(infra::mongo::LOG_VIEWS).await?,
        "replayed log views differ"
    );
    Ok(())
}

/// The status in the projected view document, `None` before the projector wrote it.
async fn projected_status(client: &ApiClient, action: &str) -> Result<Option<String>> {
    let view = client
        .database
        .collection::<Document>(infra::mongo::ACTION_VIEWS)
        .find_one(doc! { "_id": action })
        .await?;
    Ok(view.and_then(|view| view.get_str("status").ok().map(str::to_owned)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_killed_mid_batch_lose_nothing_and_apply_nothing_twice() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut deployment = Deployment::start(DeploymentOptions::default(), &["c-a", "c-b"]).await?;
    let records = 50_000;
    let action = deployment.submit(&upsert_body("kill", records)).await?;

    // SIGKILL the two consumers in turn while the action runs; each comes back under its
    // own name and first re-reads its own pending work, the other claims what idles. A
    // kill comes once at least two more batches were settled since the previous one, so
    // the faults cannot starve the action however slow the machine is.
    let mut kills = 0;
    let mut settled_at_last_kill = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, view) = deployment
            .get_json(&format!("/bulk-actions/{action}"))
            .await?;
        if view["status"] == "completed" {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "not completed: {view}; logs in {}",
                deployment.logs_dir().display()
            );
        }
        let settled = view["batchesProcessed"].as_u64().unwrap_or(0);
        if kills < MAX_KILLS && settled >= settled_at_last_kill + 2 {
            let victim = if kills % 2 == 0 { "c-a" } else { "c-b" };
            deployment.kill_consumer(victim);
            kills += 1;
            settled_at_last_kill = settled;
            tokio::time::sleep(Duration::from_millis(200)).await;
            deployment.start_consumer(victim)?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("consumers were SIGKILLed {kills} times during the action");
    ensure!(kills >= 3, "the action outran the faults ({kills} kills)");

    wait_done(&deployment, &action, Duration::from_secs(60)).await?;
    assert_exact_upsert(&deployment, "kill", &action, records, records / 500).await?;
    let retried = events(&deployment, &action)
        .await?
        .iter()
        .filter(|e| matches!(e.envelope.payload, EventPayload::BatchProcessed { attempt, .. } if attempt > 1))
        .count();
    eprintln!("{retried} batches needed more than one attempt");
    assert_replay_reproduces_views(&mut deployment).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_action_resumes_to_the_views_a_replay_builds() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Small batches make many events: projecting them takes several of the kill windows.
    let options = DeploymentOptions {
        batch_size: 50,
        ..DeploymentOptions::default()
    };
    let mut deployment = Deployment::start(options, &["c-a"]).await?;
    // The projector is down while the actions run, so it has their whole backlog to
    // project when it comes back: projecting is then what it is killed in the middle of.
    deployment.kill_projector();
    let first = deployment.submit(&upsert_body("proj-a", 40_000)).await?;
    let mut mixed = upsert_body("proj-b", 3_000);
    if let Some(data) = mixed["data"].as_array_mut() {
        data.push(json!({ "email": "USER7@proj-b.io", "name": "dup" }));
        data.push(json!({ "email": "not-an-email" }));
    }
    let second = deployment.submit(&mixed).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    for action in [&first, &second] {
        loop {
            let done = events(&deployment, action)
                .await?
                .iter()
                .any(|e| matches!(e.envelope.payload, EventPayload::Completed {}));
            if done {
                break;
            }
            if Instant::now() > deadline {
                bail!("not processed; logs in {}", deployment.logs_dir().display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Start the projector and SIGKILL it again and again while the views catch up: the
    // loop watches the projected view itself, not the api's read-your-writes answer.
    let mut kills = 0;
    deployment.start_projector()?;
    while projected_status(&deployment, &first).await?.as_deref() != Some("completed") {
        if Instant::now() > deadline {
            bail!("not projected; logs in {}", deployment.logs_dir().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if kills < MAX_KILLS {
            deployment.kill_projector();
            kills += 1;
            deployment.start_projector()?;
        }
    }
    eprintln!("the projector was SIGKILLed {kills} times while projecting");
    ensure!(
        kills >= 3,
        "the projection outran the faults ({kills} kills)"
    );
    let first_view = wait_done(&deployment, &first, Duration::from_secs(60)).await?;
    let second_view = wait_done(&deployment, &second, Duration::from_secs(60)).await?;
    ensure!(first_view["succeeded"] == 40_000, "{first_view}");
    ensure!(
        second_view["succeeded"] == 3_000
            && second_view["skipped"] == 1
            && second_view["failed"] == 1,
        "{second_view}"
    );
    assert_replay_reproduces_views(&mut deployment).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_mongodb_restarts_mid_action_heal_without_an_operator() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut deployment = Deployment::start(DeploymentOptions::default(), &["c-a", "c-b"]).await?;
    let records = 30_000;
    let action = deployment.submit(&upsert_body("outage", records)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    deployment.services.kill_redis();
    let readiness = wait_unready(&deployment, "redis").await?;
    eprintln!("while redis was down: {readiness}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    deployment.services.start_redis_again()?;
    deployment.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    deployment.services.kill_mongodb();
    let readiness = wait_unready(&deployment, "mongodb").await?;
    eprintln!("while mongodb was down: {readiness}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    deployment.services.start_mongodb_again()?;
    deployment.wait_ready(Duration::from_secs(60)).await?;

    wait_done(&deployment, &action, Duration::from_secs(300)).await?;
    // The outage was waited out, not taken for the store refusing the action's views.
    let mut conn = infra::redis_conn::shared(&deployment.redis_url()).await?;
    let keys = infra::Keys::new("test", 4);
    for partition in keys.partitions() {
        let quarantined: u64 =
            redis::AsyncCommands::hlen(&mut conn, keys.quarantine(partition)).await?;
        ensure!(quarantined == 0, "{quarantined} actions quarantined");
    }
    assert_exact_upsert(&deployment, "outage", &action, records, records / 500).await?;
    assert_replay_reproduces_views(&mut deployment).await
}

/// Polls `/readyz` until it reports `dependency` down with a 503.
async fn wait_unready(deployment: &Deployment, dependency: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((503, body)) = deployment.get_json("/readyz").await {
            if body[dependency] == false {
                return Ok(body);
            }
        }
        if Instant::now() > deadline {
            bail!("/readyz never reported {dependency} down");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_while_accepting_leaves_whole_actions_or_none() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut deployment = Deployment::start(DeploymentOptions::default(), &["c-a"]).await?;
    let records = 50_000;
    let body = upsert_body("accept", records);
    let key = "import-2026-11-28";

    // Kill the api at growing delays into the same submission (with its Idempotency-Key),
    // and into one without a key, then retry as a client would.
    let mut answered = 0;
    for delay_ms in [30u64, 120, 300, 600, 1000, 1600] {
        for with_key in [true, false] {
            let client = deployment.client.clone();
            let body = if with_key {
                body.clone()
            } else {
                upsert_body("nokey", 5_000)
            };
            let api_key = client
                .key_for(body["accountId"].as_str().unwrap_or(""))
                .await?;
            let post = tokio::spawn(async move {
                let mut request = client
                    .http
                    .post(client.url("/bulk-actions"))
                    .bearer_auth(api_key)
                    .json(&body);
                if with_key {
                    request = request.header("Idempotency-Key", key);
                }
                request
                    .send()
                    .await
                    .map(|response| response.status().as_u16())
            });
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            deployment.kill_api();
            if let Ok(Ok(202)) = post.await {
                answered += 1;
            }
            deployment.start_api()?;
            deployment.wait_ready(Duration::from_secs(60)).await?;
        }
    }
    eprintln!("{answered} of 12 interrupted submissions were answered 202 before the kill");

    let submit = |body: Value| {
        let client = deployment.client.clone();
        async move {
            let api_key = client
                .key_for(body["accountId"].as_str().unwrap_or(""))
                .await?;
            let response = client
                .http
                .post(client.url("/bulk-actions"))
                .bearer_auth(api_key)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await?;
            let replayed = response.headers().contains_key("idempotent-replayed");
            let status = response.status().as_u16();
            let view: Value = response.json().await?;
            anyhow::Ok((status, replayed, view))
        }
    };
    let (status, _, view) = submit(body.clone()).await?;
    ensure!(status == 202, "{status}: {view}");
    let action = view["actionId"].as_str().unwrap_or_default().to_owned();
    let (status, replayed, again) = submit(body.clone()).await?;
    ensure!(status == 202 && replayed && again["actionId"] == action.as_str());
    let (status, _, reused) = submit(upsert_body("accept", 10)).await?;
    ensure!(
        status == 422 && reused["error"]["code"] == "idempotency_key_reused",
        "{reused}"
    );

    // Every action that exists completes; the keyed submission made exactly one.
    let store = event_store(&deployment).await?;
    let mut accepted = Vec::new();
    for partition in store.keys().partitions() {
        accepted.extend(store.actions_in(partition).await?);
    }
    let mut keyed = 0;
    for id in &accepted {
        let view = wait_done(&deployment, &id.to_string(), Duration::from_secs(300)).await?;
        ensure!(view["status"] == "completed", "{view}");
        if view["accountId"] == "accept" {
            keyed += 1;
        } else {
            ensure!(view["succeeded"] == 5_000, "{view}");
        }
    }
    ensure!(keyed == 1, "{keyed} actions for one Idempotency-Key");
    eprintln!(
        "{} actions exist after the kills; all completed",
        accepted.len()
    );
    assert_exact_upsert(&deployment, "accept", &action, records, records / 500).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_consumers_and_api_within_the_deadline() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let options = DeploymentOptions {
        shutdown_grace_ms: 3_000,
        ..DeploymentOptions::default()
    };
    let mut deployment = Deployment::start(options, &["c-a"]).await?;
    let records = 20_000;
    let action = deployment.submit(&upsert_body("term", records)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let took = deployment
        .terminate_consumer("c-a", Duration::from_secs(10))
        .await?;
    eprintln!("consumer exited {took:?} after SIGTERM");
    ensure!(took <= Duration::from_millis(3_000 + 1_500), "{took:?}");
    // Another consumer finishes the action, including anything handed back.
    deployment.start_consumer("c-b")?;
    wait_done(&deployment, &action, Duration::from_secs(300)).await?;
    assert_exact_upsert(&deployment, "term", &action, records, records / 500).await?;

    let took = deployment.terminate_api(Duration::from_secs(10)).await?;
    eprintln!("api exited {took:?} after SIGTERM");
    ensure!(took <= Duration::from_secs(2), "{took:?}");
    ensure!(
        deployment.get_json("/healthz").await.is_err(),
        "the api still answers"
    );
    Ok(())
}

/// Makes the store itself refuse every write of a contact whose email starts with
/// `poison`: a trigger on FerretDB's PostgreSQL table, so the error comes from the real
/// server on every attempt, exactly like a document a production server keeps rejecting.
async fn poison_the_store(deployment: &Deployment) -> Result<()> {
    let table = deployment.contacts_table().await?;
    deployment.services.psql(&format!(
        "CREATE FUNCTION public.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW._jsonb->>'email' LIKE 'poison%' THEN \
           RAISE EXCEPTION 'poisoned record % %', NEW._jsonb->>'email', repeat('x', 20000); \
         END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON {table} \
         FOR EACH ROW EXECUTE FUNCTION public.refuse_poison();"
    ))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_is_dead_lettered_and_the_action_completes() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let options = DeploymentOptions {
        max_batch_attempts: 3,
        ..DeploymentOptions::default()
    };
    let mut deployment = Deployment::start(options, &["c-a", "c-b"]).await?;
    poison_the_store(&deployment).await?;
    let mut body = upsert_body("poison", 2_000);
    body["data"][1234]["email"] = json!("poison@poison.io");
    let action = deployment.submit(&body).await?;
    let view = wait_done(&deployment, &action, Duration::from_secs(120)).await?;

    // Batch 2 (records 1000-1499) holds the poison; the other three are applied. Of batch
    // 2, what the refused attempts inserted is reported `created` (the look before the dead
    // letter), and the rest, the poison among them, `dead_lettered`: not in the store.
    let logs = deployment.all_logs(&action).await?;
    ensure!(logs.len() == 2_000);
    let mut dead_lettered = 0;
    for (i, line) in logs.iter().enumerate() {
        let email = line["email"].as_str().unwrap_or_default();
        let stored = deployment
            .contacts()
            .find_one(doc! { "accountId": "poison", "email": email })
            .await?;
        let expected = match (&stored, (1000..1500).contains(&i)) {
            (Some(_), _) => "created",
            (None, true) => "dead_lettered",
            (None, false) => anyhow::bail!("line {i}: {email} was not applied: {line}"),
        };
        ensure!(line["code"] == expected, "line {i}: {line}");
        if expected == "dead_lettered" {
            dead_lettered += 1;
        }
        // The store's 20 KB error is quoted in a bounded excerpt, not 500 times whole.
        let message = line["message"].as_str().unwrap_or_default();
        ensure!(
            message.len() <= domain::text::MESSAGE_MAX_BYTES,
            "line {i}: {message}"
        );
    }
    ensure!(
        logs[1234]["code"] == "dead_lettered"
            && view["status"] == "completed"
            && view["succeeded"] == 2_000 - dead_lettered
            && view["failed"] == dead_lettered
            && view["byReason"]["dead_lettered"] == dead_lettered
            && view["batchesProcessed"] == 3
            && view["batchesDeadLettered"] == 1,
        "{view}"
    );

    // The dead-letter stream holds the batch, its records and the store's error.
    let mut conn = infra::redis_conn::shared(&deployment.redis_url()).await?;
    let keys = infra::Keys::new("test", 4);
    let partition = keys.partition_of(ActionId::parse(&action).expect("ulid"));
    let dead: redis::streams::StreamRangeReply =
        redis::AsyncCommands::xrange_all(&mut conn, keys.dead_letters(partition)).await?;
    ensure!(dead.ids.len() == 1, "{} dead letters", dead.ids.len());
    let entry = &dead.ids[0];
    let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
    ensure!(field("action") == action && field("batch") == "2" && field("attempts") == "3");
    ensure!(
        field("error").contains("poisoned record")
            && field("error").len() <= domain::text::ERROR_MAX_BYTES,
        "{}",
        field("error")
    );
    let records: Value = serde_json::from_str(&field("records"))?;
    ensure!(records["records"].as_array().map(Vec::len) == Some(500));
    for i in [0, 1999] {
        let email = format!("user{i}@poison.io");
        ensure!(deployment
            .contacts()
            .find_one(doc! { "accountId": "poison", "email": &email })
            .await?
            .is_some());
    }
    assert_no_work_left(&deployment).await?;
    assert_replay_reproduces_views(&mut deployment).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stopped_at_its_deadline_hands_its_batches_back() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // No grace at all, and a claim idle time longer than the test may take: without the
    // hand-back, the interrupted batches would sit pending for a minute.
    let options = DeploymentOptions {
        shutdown_grace_ms: 0,
        claim_idle_ms: 60_000,
        consumer_concurrency: 4,
        ..DeploymentOptions::default()
    };
    let mut deployment = Deployment::start(options, &["c-a"]).await?;
    let records = 20_000;
    let action = deployment.submit(&upsert_body("handback", records)).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let took = deployment
        .terminate_consumer("c-a", Duration::from_secs(10))
        .await?;
    eprintln!("consumer exited {took:?} after SIGTERM with no grace");

    // What it held is pending, but marked as idle for the whole claim time already.
    let mut conn = infra::redis_conn::shared(&deployment.redis_url()).await?;
    let keys = infra::Keys::new("test", 4);
    let mut handed_back = 0;
    for partition in keys.partitions() {
        let pending: redis::streams::StreamPendingCountReply =
            redis::AsyncCommands::xpending_count(
                &mut conn,
                keys.work(partition),
                infra::keys::CONSUMER_GROUP,
                "-",
                "+",
                100,
            )
            .await?;
        for entry in pending.ids {
            ensure!(
                entry.last_delivered_ms >= 60_000,
                "a pending batch was not handed back: idle {} ms",
                entry.last_delivered_ms
            );
            handed_back += 1;
        }
    }
    eprintln!("{handed_back} batches were handed back");
    ensure!(handed_back > 0, "SIGTERM found no batch in flight");

    let started = Instant::now();
    deployment.start_consumer("c-b")?;
    wait_done(&deployment, &action, Duration::from_secs(45)).await?;
    eprintln!(
        "a new consumer finished the action {:?} later",
        started.elapsed()
    );
    assert_exact_upsert(&deployment, "handback", &action, records, records / 500).await
}

/// A body of at most `size` bytes, made while it is sent: `head`, `fill` as many times as
/// fits, then `tail`. The test never holds it.
fn generated_body(
    head: String,
    fill: &'static [u8],
    tail: &'static str,
    size: usize,
) -> reqwest::Body {
    const CHUNK: usize = 1 << 20;
    let repeats = (size - head.len() - tail.len()) / fill.len();
    let per_chunk = CHUNK / fill.len();
    let chunk = fill.repeat(per_chunk);
    let chunks = std::iter::once(head.into_bytes())
        .chain((0..repeats / per_chunk).map(move |_| chunk.clone()))
        .chain(std::iter::once(fill.repeat(repeats % per_chunk)))
        .chain(std::iter::once(tail.as_bytes().to_vec()));
    reqwest::Body::wrap_stream(futures::stream::iter(chunks.map(Ok::<_, std::io::Error>)))
}

/// What a hostile body is, how it starts, the bytes repeated to fill it, how it ends, and
/// the status and code it must get.
type HostileBody = (
    &'static str,
    String,
    &'static [u8],
    &'static str,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_bodies_cost_the_api_a_record_not_a_body() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::start(DeploymentOptions::default(), &[]).await?;
    // Just under the api's MAX_BODY_BYTES (64 MiB), so that each is read, not refused.
    const SIZE: usize = 64 * 1024 * 1024 - 1024;
    let settings = r#"{"entityType":"contact","actionType":"upsert","#;
    let hostile: [HostileBody; 5] = [
        (
            "32 million records",
            format!(r#"{settings}"data":["#),
            b"0,",
            "0]}",
            400,
            "too_many_records",
        ),
        (
            "deep nesting",
            format!(r#"{settings}"data":["#),
            b"[",
            "]}",
            400,
            "malformed_json",
        ),
        (
            "a huge setting",
            format!(r#"{settings}"data":[{{"email":"a@x.io"}}],"scheduledFor":""#),
            b"x",
            "\"}",
            400,
            "invalid_field",
        ),
        (
            "a huge field name",
            "{\"".to_owned(),
            b"k",
            "\":1}",
            400,
            "unknown_field",
        ),
        // Fails alone, as an NDJSON line would; the action is accepted.
        (
            "a huge record",
            format!(r#"{settings}"data":[{{"email":"big@x.io","name":""#),
            b"n",
            "\"}]}",
            202,
            "",
        ),
    ];
    let started = Instant::now();
    let replies = futures::future::join_all(hostile.iter().map(|(_, head, fill, tail, ..)| {
        let body = generated_body(head.clone(), fill, tail, SIZE);
        deployment.upload("/bulk-actions", "application/json", body, &[])
    }))
    .await;
    let elapsed = started.elapsed();
    let peaks = deployment.peak_rss_kib();
    let api_peak = peaks
        .iter()
        .find(|(role, _)| role == "api")
        .map(|(_, kib)| *kib)
        .ok_or_else(|| anyhow::anyhow!("no api peak in {peaks:?}"))?;
    println!(
        "five {:.1} MiB hostile JSON bodies at once: answered in {elapsed:?}, api peak RSS {} MiB",
        SIZE as f64 / 1048576.0,
        api_peak / 1024
    );
    ensure!(
        api_peak < 300 * 1024,
        "the api peaked at {} MiB (limit 300 MiB)",
        api_peak / 1024
    );
    for ((name, .., status, code), reply) in hostile.iter().zip(replies) {
        let reply = reply?;
        assert_eq!(reply.status, *status, "{name}: {}", reply.body);
        if *status == 202 {
            assert_eq!(
                (&reply.body["totalRecords"], &reply.body["failed"]),
                (&json!(1), &json!(1)),
                "{name}: {}",
                reply.body
            );
        } else {
            assert_eq!(reply.body["error"]["code"], *code, "{name}: {}", reply.body);
        }
    }
    Ok(())
}
