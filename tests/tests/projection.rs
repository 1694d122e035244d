//! The projector and the read path under trouble that concerns one action or one reader:
//! an action whose views the store refuses, feed and work entries left behind by readers
//! that died under another name, and a projector that is not running at all. In each case
//! every other action, and every reader, must see exact views.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bulk_tests::{AppOptions, TestApp};
use domain::{ActionId, EventPayload};
use infra::views::StoredActionView;
use infra::EventStore;
use mongodb::bson::doc;
use redis::AsyncCommands;
use serde_json::{json, Value};

fn upsert(account: &str, records: usize) -> Value {
    let data: Vec<Value> = (0..records)
        .map(|i| json!({ "email": format!("user{i}@{account}.io"), "name": format!("User {i}") }))
        .collect();
    json!({ "accountId": account, "entityType": "contact", "actionType": "upsert", "data": data })
}

async fn event_store(app: &TestApp) -> Result<EventStore> {
    Ok(EventStore::new(
        infra::redis_conn::shared(&app.services.redis_url).await?,
        infra::Keys::new("test", 4),
    ))
}

fn action_id(raw: &str) -> ActionId {
    ActionId::parse(raw).expect("the api returns ULIDs")
}

/// The view a fold of every event of the action builds, as the projector stores it.
async fn folded_view(app: &TestApp, action: &str) -> Result<domain::ActionView> {
    let events = bulk_tests::all_events(&event_store(app).await?, action_id(action)).await?;
    domain::view::fold(None, events.iter().map(|event| &event.envelope))?.context("no events")
}

async fn stored_view(app: &TestApp, action: &str) -> Result<Option<StoredActionView>> {
    Ok(app
        .database
        .collection::<StoredActionView>(infra::mongo::ACTION_VIEWS)
        .find_one(doc! { "_id": action })
        .await?)
}

/// The stored view equals the fold of every event, and there is one `created` log line per
/// record.
async fn assert_projected_exactly(app: &TestApp, action: &str, records: usize) -> Result<()> {
    let stored = stored_view(app, action).await?.context("no stored view")?;
    let folded = folded_view(app, action).await?;
    ensure!(
        stored.view == folded,
        "stored {:?}\nfolded {folded:?}",
        stored.view
    );
    ensure!(
        folded.status == domain::ActionStatus::Completed && folded.succeeded as usize == records,
        "{folded:?}"
    );
    let lines = app.stored_log_lines(action).await?;
    ensure!(lines.len() == records, "{} log lines", lines.len());
    for (i, line) in lines.iter().enumerate() {
        ensure!(line.get_i64("index")? == i as i64 && line.get_str("code")? == "created");
    }
    Ok(())
}

/// Waits until the action's stream holds its `Completed` event (the projector may be off).
async fn wait_completed_in_redis(app: &TestApp, action: &str, timeout: Duration) -> Result<()> {
    let store = event_store(app).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let events = bulk_tests::all_events(&store, action_id(action)).await?;
        if events
            .iter()
            .any(|event| matches!(event.envelope.payload, EventPayload::Completed {}))
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{action} not completed in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes FerretDB's PostgreSQL refuse every log bucket of `account`, the way a real server
/// refuses a document it finds invalid or too large, on every attempt.
async fn refuse_log_buckets_of(app: &TestApp, account: &str) -> Result<()> {
    let table = app.services.psql(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE tablename LIKE 'bulk_action_log_buckets%' LIMIT 1",
    )?;
    ensure!(!table.is_empty(), "FerretDB has no log bucket table");
    app.services.psql(&format!(
        "CREATE FUNCTION public.refuse_bucket() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW._jsonb->>'accountId' = '{account}' THEN \
           RAISE EXCEPTION 'bucket refused for %', NEW._jsonb->>'actionId'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse_bucket BEFORE INSERT OR UPDATE ON {table} \
         FOR EACH ROW EXECUTE FUNCTION public.refuse_bucket();"
    ))?;
    Ok(())
}

async fn quarantine_of(app: &TestApp, action: &str) -> Result<Option<String>> {
    let keys = infra::Keys::new("test", 4);
    let mut conn = infra::redis_conn::shared(&app.services.redis_url).await?;
    let key = keys.quarantine(keys.partition_of(action_id(action)));
    Ok(conn.hget(key, action).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_whose_views_the_store_refuses_is_quarantined_and_others_go_on() -> Result<()> {
    let mut app = TestApp::spawn(AppOptions::default()).await?;
    refuse_log_buckets_of(&app, "poisoned").await?;
    let poisoned = app.submit(&upsert("poisoned", 300)).await?;
    wait_completed_in_redis(&app, &poisoned, Duration::from_secs(60)).await?;

    // Every other account's action is projected, its list entry and its logs.
    let started = Instant::now();
    let mut others = Vec::new();
    for account in ["healthy-a", "healthy-b", "healthy-c"] {
        others.push(app.submit(&upsert(account, 200)).await?);
    }
    for action in &others {
        app.wait_projected_terminal(action, Duration::from_secs(30))
            .await?;
        assert_projected_exactly(&app, action, 200).await?;
        ensure!(app.all_logs(action).await?.len() == 200);
    }
    eprintln!(
        "the other actions were projected in {:?}",
        started.elapsed()
    );

    // The poisoned action reads exact (folded from its events) and says why its views lag.
    let (_, view) = app.get_json(&format!("/bulk-actions/{poisoned}")).await?;
    ensure!(
        view["status"] == "completed" && view["succeeded"] == 300,
        "{view}"
    );
    let error = &view["projectionError"];
    ensure!(error["code"] == "store_refused", "{view}");
    ensure!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("bucket refused") && m.chars().count() <= 512),
        "{error}"
    );
    let stored = stored_view(&app, &poisoned).await?.context("no view")?;
    ensure!(
        error["seq"] == stored.view.last_seq + 1,
        "{error} {:?}",
        stored.view
    );
    ensure!(
        stored.view.projection_error.is_some(),
        "not marked on the stored view"
    );
    let quarantined = quarantine_of(&app, &poisoned)
        .await?
        .context("not in redis")?;

    // A later feed entry of the quarantined action is skipped, not retried forever: the
    // quarantine keeps its time, and another action behind it is projected.
    let store = event_store(&app).await?;
    let mut conn = infra::redis_conn::shared(&app.services.redis_url).await?;
    let feed = store
        .keys()
        .feed(store.keys().partition_of(action_id(&poisoned)));
    let _: String = conn
        .xadd(&feed, "*", &[("action", poisoned.as_str()), ("seq", "1")])
        .await?;
    let late = app.submit(&upsert("healthy-d", 50)).await?;
    app.wait_projected_terminal(&late, Duration::from_secs(30))
        .await?;
    ensure!(quarantine_of(&app, &poisoned).await?.as_ref() == Some(&quarantined));

    // The cause fixed, a replay projects it exactly and lifts the quarantine.
    drop_trigger(&app).await?;
    app.stop_projector().await;
    let report = app.replay().await?;
    ensure!(report.quarantined == 0 && report.actions == 5, "{report:?}");
    assert_projected_exactly(&app, &poisoned, 300).await?;
    ensure!(quarantine_of(&app, &poisoned).await?.is_none());
    let (_, view) = app.get_json(&format!("/bulk-actions/{poisoned}")).await?;
    ensure!(view.get("projectionError").is_none(), "{view}");
    // Clients learn of the field from the OpenAPI document.
    let (_, openapi) = app.get_json("/openapi.json").await?;
    let schemas = &openapi["components"]["schemas"];
    ensure!(schemas["ActionView"]["properties"]["projectionError"].is_object());
    let required = schemas["ProjectionError"]["required"].to_string();
    for field in ["code", "message", "at", "seq"] {
        ensure!(
            required.contains(field),
            "ProjectionError schema: {required}"
        );
    }
    let rebuilt = app.all_docs(infra::mongo::ACTION_VIEWS).await?;
    app.replay().await?;
    ensure!(rebuilt == app.all_docs(infra::mongo::ACTION_VIEWS).await?);
    Ok(())
}

async fn drop_trigger(app: &TestApp) -> Result<()> {
    let table = app.services.psql(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE tablename LIKE 'bulk_action_log_buckets%' LIMIT 1",
    )?;
    app.services
        .psql(&format!("DROP TRIGGER refuse_bucket ON {table};"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_dead_reader_left_under_another_name_are_taken_over() -> Result<()> {
    let options = AppOptions {
        claim_idle_ms: 1_500,
        ..AppOptions::default()
    };
    let mut app = TestApp::spawn(options).await?;
    app.stop_consumers().await;
    app.stop_projector().await;
    let action = app.submit(&upsert("ghosts", 300)).await?;
    let store = event_store(&app).await?;
    let partition = store.keys().partition_of(action_id(&action));
    let mut conn = infra::redis_conn::shared(&app.services.redis_url).await?;

    // A consumer that is gone for good took one batch.
    let limits = infra::flow::DispatchLimits {
        default_records_per_minute: 100_000_000,
        burst_seconds: 0,
        max_outstanding: 1,
        max_grants: 1,
    };
    let scheduling = infra::Scheduling::new(store.clone());
    ensure!(scheduling.dispatch(partition, limits).await?.granted == 1);
    let work = store.keys().work(partition);
    let taken = ghost_read(
        &mut conn,
        &work,
        infra::keys::CONSUMER_GROUP,
        "ghost-consumer",
    )
    .await?;
    ensure!(taken == 1, "the ghost consumer read {taken} work entries");
    app.start_consumer();
    wait_completed_in_redis(&app, &action, Duration::from_secs(60)).await?;

    // A projector that is gone for good took every feed entry of the action.
    let feed = store.keys().feed(partition);
    let taken = ghost_read(
        &mut conn,
        &feed,
        infra::keys::PROJECTOR_GROUP,
        "ghost-projector",
    )
    .await?;
    ensure!(taken > 0, "the ghost projector read nothing");
    app.start_projector();
    let started = Instant::now();
    app.wait_projected_terminal(&action, Duration::from_secs(20))
        .await?;
    eprintln!(
        "the live projector took over {taken} feed entries after {:?}",
        started.elapsed()
    );
    assert_projected_exactly(&app, &action, 300).await?;
    for (stream, group) in [
        (&work, infra::keys::CONSUMER_GROUP),
        (&feed, infra::keys::PROJECTOR_GROUP),
    ] {
        let pending: redis::streams::StreamPendingReply = conn.xpending(stream, group).await?;
        ensure!(
            pending.count() == 0,
            "{} entries pending in {stream}",
            pending.count()
        );
    }
    Ok(())
}

/// Reads every new entry of `stream` as `reader` and never acknowledges them.
async fn ghost_read(
    conn: &mut infra::redis_conn::Shared,
    stream: &str,
    group: &str,
    reader: &str,
) -> Result<usize> {
    let options = redis::streams::StreamReadOptions::default()
        .group(group, reader)
        .count(10_000);
    let reply: Option<redis::streams::StreamReadReply> =
        conn.xread_options(&[stream], &[">"], &options).await?;
    Ok(reply.map_or(0, |reply| reply.keys.iter().map(|key| key.ids.len()).sum()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_every_event_however_far_the_projector_lags() -> Result<()> {
    let options = AppOptions {
        batch_size: 10,
        ..AppOptions::default()
    };
    let mut app = TestApp::spawn(options).await?;
    app.stop_projector().await;
    // A paced action keeps running while the other one finishes.
    let mut paced = upsert("lag-paced", 2_000);
    paced["maxRecordsPerMinute"] = json!(6_000);
    let paced = app.submit(&paced).await?;
    let action = app.submit(&upsert("lag", 2_000)).await?;
    wait_completed_in_redis(&app, &action, Duration::from_secs(120)).await?;
    let events = bulk_tests::all_events(&event_store(&app).await?, action_id(&action)).await?;
    ensure!(events.len() > 200, "{} events", events.len());

    let asked = Instant::now();
    let (_, view) = app.get_json(&format!("/bulk-actions/{action}")).await?;
    eprintln!(
        "GET folded {} events in {:?}",
        events.len(),
        asked.elapsed()
    );
    ensure!(
        view["status"] == "completed"
            && view["processedRecords"] == 2_000
            && view["succeeded"] == 2_000
            && view["batchesProcessed"] == 200
            && view["lastSeq"] == events.len(),
        "GET: {view}"
    );
    let (_, stats) = app
        .get_json(&format!("/bulk-actions/{action}/stats"))
        .await?;
    ensure!(
        stats["status"] == "completed"
            && stats["processed"] == 2_000
            && stats["succeeded"] == 2_000,
        "stats: {stats}"
    );

    // The control endpoints answer with every event too, the one they just appended included.
    let settled = wait_settled_batches(&app, &paced, 100, Duration::from_secs(60)).await?;
    let (status, view) = app
        .post_json(&format!("/bulk-actions/{paced}/pause"), &json!({}))
        .await?;
    ensure!(
        status == 200
            && view["status"] == "paused"
            && view["processedRecords"].as_u64() >= Some(settled * 10),
        "pause ({settled} batches settled before): {status} {view}"
    );
    let (status, view) = app
        .post_json(&format!("/bulk-actions/{paced}/cancel"), &json!({}))
        .await?;
    ensure!(
        status == 200 && matches!(view["status"].as_str(), Some("cancelling" | "cancelled")),
        "cancel: {status} {view}"
    );
    Ok(())
}

/// Waits until the action's stream holds more than `events` events and returns how many
/// batches it had settled by then.
async fn wait_settled_batches(
    app: &TestApp,
    action: &str,
    events: usize,
    timeout: Duration,
) -> Result<u64> {
    let store = event_store(app).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let stream = bulk_tests::all_events(&store, action_id(action)).await?;
        if stream.len() > events {
            let settled = stream
                .iter()
                .filter(|event| {
                    matches!(event.envelope.payload, EventPayload::BatchProcessed { .. })
                })
                .count();
            return Ok(settled as u64);
        }
        if Instant::now() > deadline {
            bail!("{action} has {} events after {timeout:?}", stream.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
