//! The platform on a real Redis Cluster (three masters, three replicas; `RedisCluster`):
//! the api on every path, actions on every master, a master's failover and a reshard in the
//! middle of an action.
//!
//! `scripts/test.sh` also runs the processing and flow tests (fairness, limits across
//! processes, schedules, cancel, pause, resume, PATCH, racing commands, idempotency) on a
//! cluster of their own (`BULK_TEST_REDIS=cluster`). Every script there runs behind the key
//! guard of `lua/lib.lua`, so those runs also prove that no script touches a key it was not
//! given.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use bulk_tests::error_code as code;
use bulk_tests::{AppOptions, RedisCluster, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

const PARTITIONS: u32 = 6;

/// One cluster at a time: four of them with their MongoDB on two cores would only measure
/// the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn create(account: &str, tag: &str) -> Value {
    let data: Vec<Value> = (0..5)
        .map(|i| json!({ "email": format!("{tag}{i}@{account}.io"), "name": format!("{tag} {i}") }))
        .collect();
    json!({ "accountId": account, "entityType": "contact", "actionType": "create", "data": data })
}

fn in_an_hour() -> Result<String> {
    let at = domain::Timestamp::from_millis(infra::clock::now().millis() + 3_600_000)
        .context("a time near now")?;
    Ok(at.to_string())
}

/// An app on `cluster` with `consumers` in-process consumers.
fn on(cluster: &RedisCluster, consumers: usize) -> AppOptions {
    AppOptions {
        redis_url: Some(cluster.url()),
        partitions: PARTITIONS,
        consumers,
        batch_size: 100,
        max_records_per_action: 1_000_000,
        ..AppOptions::default()
    }
}

async fn completed_events(store: &infra::EventStore, action: domain::ActionId) -> Result<usize> {
    let events = bulk_tests::all_events(store, action).await?;
    Ok(events
        .iter()
        .filter(|event| event.envelope.payload.type_name() == "Completed")
        .count())
}

/// Accounts whose partitions are served by every master, one each.
fn accounts_on_every_master(cluster: &RedisCluster, keys: &infra::Keys) -> Result<Vec<String>> {
    let mut accounts = Vec::new();
    let mut covered = BTreeSet::new();
    for name in (0..200).map(|i| format!("cluster{i}")) {
        let account = domain::AccountId::parse(&name).context("an account id")?;
        let master = cluster.master_of(&keys.feed(keys.account_partition(&account)))?;
        if covered.insert(master) {
            accounts.push(name);
        }
    }
    ensure!(accounts.len() == 3, "accounts on {covered:?}");
    Ok(accounts)
}

/// Partitions spread over every master, and the api's paths (API keys, submissions by JSON
/// and NDJSON, idempotent retries, reads that fold the events, pause, resume, PATCH,
/// cancel, request budgets) work through one connection that follows the slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_runs_on_a_redis_cluster() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await??;
    let keys = infra::Keys::new("test", PARTITIONS);
    let mut masters = BTreeSet::new();
    for partition in keys.partitions() {
        masters.insert(cluster.master_of(&keys.feed(partition))?);
    }
    ensure!(
        masters.len() == 3,
        "{PARTITIONS} partitions land on {masters:?}"
    );

    let app = TestApp::spawn(AppOptions {
        projectors: 0,
        ..on(&cluster, 0)
    })
    .await?;
    let accounts = accounts_on_every_master(&cluster, &keys)?;

    for account in &accounts {
        let mut body = create(account, "json");
        body["scheduledFor"] = json!(in_an_hour()?);
        let action = app.submit(&body).await?;
        let path = format!("/bulk-actions/{action}");
        for (verb, status) in [("pause", "paused"), ("resume", "scheduled")] {
            let (got, view) = app.post_json(&format!("{path}/{verb}"), &json!({})).await?;
            ensure!(
                (got, view["status"].as_str()) == (200, Some(status)),
                "{verb}: {got} {view}"
            );
        }
        let (got, view) = app
            .patch_action(&action, &json!({ "maxRecordsPerMinute": 600 }))
            .await?;
        ensure!(got == 200 && view["maxRecordsPerMinute"] == 600, "{view}");
        let (got, view) = app.post_json(&format!("{path}/cancel"), &json!({})).await?;
        ensure!(
            got == 200 && view["cancelRequestedAt"].is_string(),
            "cancel: {got} {view}"
        );

        let ndjson = (0..4)
            .map(|i| json!({ "email": format!("nd{i}@{account}.io") }).to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let path =
            format!("/bulk-actions?accountId={account}&entityType=contact&actionType=upsert");
        let (got, reply) = app
            .post_raw(&path, "application/x-ndjson", ndjson.into_bytes())
            .await?;
        ensure!(got == 202 && reply["totalRecords"] == 4, "{got} {reply}");

        let body = create(account, "again");
        let headers = [("idempotency-key", "cluster-retry")];
        let first = app
            .send(Method::POST, "/bulk-actions", Some(&body), &headers)
            .await?;
        let again = app
            .send(Method::POST, "/bulk-actions", Some(&body), &headers)
            .await?;
        ensure!(
            first.status == 202
                && again.header("idempotent-replayed") == Some("true")
                && first.body["actionId"] == again.body["actionId"],
            "{} {} / {} {}",
            first.status,
            first.body,
            again.status,
            again.body
        );
    }

    // An API key made, listed and revoked: its two keys are in different slots.
    let account = &accounts[0];
    let admin = format!("Bearer {}", bulk_tests::TEST_ADMIN_TOKEN);
    let keys_path = format!("/admin/accounts/{account}/api-keys");
    let made = app
        .send(Method::POST, &keys_path, None, &[("authorization", &admin)])
        .await?;
    ensure!(made.status == 201, "{}", made.body);
    let key_id = made.body["keyId"].as_str().context("keyId")?;
    let listed = app
        .send(Method::GET, &keys_path, None, &[("authorization", &admin)])
        .await?;
    ensure!(listed.body.to_string().contains(key_id), "{}", listed.body);
    let revoked = app
        .send(
            Method::DELETE,
            &format!("{keys_path}/{key_id}"),
            None,
            &[("authorization", &admin)],
        )
        .await?;
    ensure!(revoked.status == 204, "{} {}", revoked.status, revoked.body);
    let secret = format!("Bearer {}", made.body["apiKey"].as_str().context("apiKey")?);
    let refused = app
        .send(
            Method::GET,
            "/bulk-actions",
            None,
            &[("authorization", &secret)],
        )
        .await?;
    ensure!(
        (refused.status, code(&refused.body)) == (401, "unauthorized"),
        "{} {}",
        refused.status,
        refused.body
    );
    Ok(())
}

/// Two consumers and the projector on the cluster: actions of accounts on every master
/// (with duplicates and invalid records) complete with exact outcomes and contacts, and a
/// replay rebuilds the very same views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_every_master_complete_exactly_on_a_redis_cluster() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await??;
    let keys = infra::Keys::new("test", PARTITIONS);
    let accounts = accounts_on_every_master(&cluster, &keys)?;
    let app = TestApp::spawn(on(&cluster, 2)).await?;
    let mut actions = Vec::new();
    for account in &accounts {
        let mut data: Vec<Value> = (0..1_000)
            .map(|i| json!({ "email": format!("u{i}@{account}.io"), "name": format!("U{i}") }))
            .collect();
        data.push(json!({ "email": format!("u7@{account}.io"), "name": "duplicate" }));
        data.push(json!({ "email": "not-an-email" }));
        let body = json!({ "accountId": account, "entityType": "contact", "actionType": "upsert", "data": data });
        actions.push((account, app.submit(&body).await?));
    }
    for (account, action) in &actions {
        let view = app
            .wait_projected_terminal(action, std::time::Duration::from_secs(120))
            .await?;
        ensure!(
            view["status"] == "completed"
                && (
                    view["succeeded"].as_u64(),
                    view["skipped"].as_u64(),
                    view["failed"].as_u64()
                ) == (Some(1_000), Some(1), Some(1)),
            "{account}: {view}"
        );
        let contacts = app
            .contacts()
            .count_documents(mongodb::bson::doc! { "accountId": account.as_str() })
            .await?;
        ensure!(contacts == 1_000, "{account}: {contacts} contacts");
        let logs = app.all_logs(action).await?;
        ensure!(logs.len() == 1_002, "{account}: {} log lines", logs.len());
    }
    let before: Vec<Value> =
        futures::future::try_join_all(actions.iter().map(|(_, action)| app.view(action))).await?;
    app.replay().await?;
    let after: Vec<Value> =
        futures::future::try_join_all(actions.iter().map(|(_, action)| app.view(action))).await?;
    ensure!(before == after, "a replay built other views");
    Ok(())
}

/// An upsert of `records` fresh contacts of an account, under way on a cluster of its own
/// with two consumers: at least 2,000 records applied, not finished.
struct RunningAction {
    cluster: RedisCluster,
    app: TestApp,
    account: String,
    action: String,
    id: domain::ActionId,
    store: infra::EventStore,
    /// The feed of the action's partition: its slot is the partition's.
    feed: String,
}

/// An upsert of `records` new contacts on a cluster of its own, 2,000 records in; `pace`
/// (records a minute) keeps it running for as long as a test needs.
async fn a_running_action(records: u64, tag: &str, pace: Option<u64>) -> Result<RunningAction> {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await??;
    let keys = infra::Keys::new("test", PARTITIONS);
    let account = accounts_on_every_master(&cluster, &keys)?.remove(0);
    let app = TestApp::spawn(on(&cluster, 2)).await?;
    let data: Vec<Value> = (0..records)
        .map(|i| json!({ "email": format!("{tag}{i}@{account}.io"), "name": format!("{tag} {i}") }))
        .collect();
    let mut body = json!({ "accountId": account, "entityType": "contact", "actionType": "upsert", "data": data });
    if let Some(pace) = pace {
        body["maxRecordsPerMinute"] = json!(pace);
    }
    let action = app.submit(&body).await?;
    app.wait_view(&action, std::time::Duration::from_secs(60), |view| {
        view["processedRecords"].as_u64() >= Some(2_000)
    })
    .await?;
    let partition = keys.account_partition(&domain::AccountId::parse(&account).context("id")?);
    let feed = keys.feed(partition);
    let store = infra::EventStore::new(infra::redis_conn::shared(&cluster.url()).await?, keys);
    let id = domain::ActionId::parse(&action).context("a ULID")?;
    Ok(RunningAction {
        cluster,
        app,
        account,
        action,
        id,
        store,
        feed,
    })
}

/// Waits for `action` to complete, and checks its counts, contacts, log lines and that a
/// replay builds the same view. Returns how many log lines have each code.
async fn completed_exactly(
    app: &TestApp,
    account: &str,
    action: &str,
    records: u64,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let view = app
        .wait_projected_terminal(action, std::time::Duration::from_secs(180))
        .await?;
    ensure!(
        view["status"] == "completed" && view["succeeded"].as_u64() == Some(records),
        "{view}"
    );
    let contacts = app
        .contacts()
        .count_documents(mongodb::bson::doc! { "accountId": account })
        .await?;
    ensure!(contacts == records, "{contacts} contacts");
    let logs = app.all_logs(action).await?;
    ensure!(logs.len() as u64 == records, "{} log lines", logs.len());
    let mut codes = std::collections::BTreeMap::new();
    for line in &logs {
        *codes
            .entry(line["code"].as_str().unwrap_or("").to_owned())
            .or_insert(0) += 1;
    }
    let served = app.view(action).await?;
    app.replay().await?;
    ensure!(
        app.view(action).await? == served,
        "a replay built another view"
    );
    Ok(codes)
}

/// The master serving a 50,000-record action's partition is SIGKILLed mid-action: its replica takes
/// over, and the action completes with exact counts, contacts and log lines, one
/// `Completed`, and the view a replay builds (decision 0047).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_completes_exactly_through_its_masters_failover() -> Result<()> {
    const RECORDS: u64 = 50_000;
    let _serial = SERIAL.lock().await;
    let mut run = a_running_action(RECORDS, "f", None).await?;
    let master = run.cluster.master_of(&run.feed)?;
    // A keyed submission of the same account, on the same master (an update of nobody,
    // so that the account's contacts stay the action's).
    let keyed_body = json!({
        "accountId": run.account, "entityType": "contact", "actionType": "update",
        "data": [{ "email": "nobody@failover.io", "name": "n" }],
    });
    let keyed = [("idempotency-key", "across-the-failover")];
    let first = run
        .app
        .send(Method::POST, "/bulk-actions", Some(&keyed_body), &keyed)
        .await?;
    ensure!(first.status == 202, "{} {}", first.status, first.body);
    let finished_before = completed_events(&run.store, run.id).await?;
    run.cluster.kill_node(master);
    ensure!(
        finished_before == 0,
        "the action ended before its master was killed"
    );

    let codes = completed_exactly(&run.app, &run.account, &run.action, RECORDS).await?;
    let completed = completed_events(&run.store, run.id).await?;
    ensure!(completed == 1, "{completed} Completed events");
    eprintln!("failover outcomes: {codes:?}");
    // A record whose creation was in the lost tail of the old master is applied again and
    // may read `updated` (decision 0047); nothing else may appear.
    ensure!(
        codes
            .keys()
            .all(|code| code == "created" || code == "updated"),
        "{codes:?}"
    );
    let masters = run.cluster.masters()?;
    ensure!(
        masters.len() == 3 && !masters.contains(&master),
        "the killed master's replica was promoted: masters {masters:?}, killed {master}"
    );
    // The reservation failed over with the action it guards: a retry is the same action.
    let again = run
        .app
        .send(Method::POST, "/bulk-actions", Some(&keyed_body), &keyed)
        .await?;
    ensure!(
        again.header("idempotent-replayed") == Some("true")
            && again.body["actionId"] == first.body["actionId"],
        "{} {} after {}",
        again.status,
        again.body,
        first.body
    );

    // A replica SIGKILLed and started again on its data changes nothing.
    let replica = *run.cluster.replicas()?.first().context("a live replica")?;
    run.cluster.kill_node(replica);
    run.cluster.start_node_again(replica)?;
    let cluster = run.cluster;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster
            .wait_healthy(std::time::Duration::from_secs(30))
            .map(|()| cluster)
    })
    .await??;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cluster.replica_in_sync(replica)? {
        ensure!(
            std::time::Instant::now() < deadline,
            "the replica did not come back in sync as a replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ensure!(
        completed_events(&run.store, run.id).await? == 1,
        "the stream changed"
    );
    Ok(())
}

/// Every slot of the master serving an action's partition moves to another master with
/// `redis-cli --cluster reshard` while the action runs: it completes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_completes_exactly_while_its_slot_moves_to_another_master() -> Result<()> {
    const RECORDS: u64 = 20_000;
    let _serial = SERIAL.lock().await;
    // Paced to take 40 s, longer than moving a third of the slots takes here.
    let run = a_running_action(RECORDS, "r", Some(30_000)).await?;
    let from = run.cluster.master_of(&run.feed)?;
    let to = run
        .cluster
        .masters()?
        .into_iter()
        .find(|port| *port != from)
        .context("another master")?;
    ensure!(
        completed_events(&run.store, run.id).await? == 0,
        "the action ended before its slot began to move"
    );
    let cluster = tokio::task::spawn_blocking(move || {
        let cluster = run.cluster;
        cluster.move_all_slots(from, to).map(|()| cluster)
    })
    .await??;
    ensure!(cluster.master_of(&run.feed)? == to, "the slot did not move");
    // Unfinished on both sides of the move: its slot moved while batches were settling.
    ensure!(
        completed_events(&run.store, run.id).await? == 0,
        "the action ended before its slot had moved"
    );

    let codes = completed_exactly(&run.app, &run.account, &run.action, RECORDS).await?;
    ensure!(codes.keys().eq(["created"]), "{codes:?}");
    Ok(())
}
