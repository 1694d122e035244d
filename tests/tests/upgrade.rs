//! A deployment upgraded in place keeps working.
//!
//! `tests/fixtures/upgrade-from-c200203/` holds what the build before issue 13's redesign
//! (commit c200203) left behind: its Redis data (an RDB file), its MongoDB documents
//! (canonical Extended JSON), the API keys it made and every answer its api gave about five
//! actions, caught in each state an upgrade can meet: completed, cancelled, scheduled (and
//! repaced), paused with batches parked, and queued while no consumer ran.
//!
//! The test starts today's binaries on that data and checks that they answer exactly as the
//! old build did, accept its keys, carry every unfinished action to its end, and that a
//! replay of the streams (old events and new) rebuilds the very views they made.
//!
//! `record_the_fixture` (ignored) wrote the fixture. To record one from another build:
//!
//! ```text
//! git worktree add /tmp/previous <rev>
//! (cd /tmp/previous && cargo build --bins -p api -p consumer -p projector)
//! BULK_BINARIES_DIR=/tmp/previous/target/debug \
//! UPGRADE_FIXTURE=$PWD/tests/fixtures/upgrade-from-<rev> \
//!   cargo test -p bulk-tests --test upgrade -- --ignored record_the_fixture
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bulk_tests::{ApiClient, Deployment, DeploymentOptions, Services};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document};
use serde_json::{json, Value};

const ACCOUNT_A: &str = "upgrade-a";
const ACCOUNT_B: &str = "upgrade-b";
const WAIT: Duration = Duration::from_secs(120);

fn options() -> DeploymentOptions {
    DeploymentOptions {
        batch_size: 50,
        consumer_concurrency: 1,
        env: vec![("DISPATCH_LOOKAHEAD", "4".into())],
        ..DeploymentOptions::default()
    }
}

fn fixture_dir() -> PathBuf {
    std::env::var_os("UPGRADE_FIXTURE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade-from-c200203"),
        PathBuf::from,
    )
}

fn people(tag: &str, range: std::ops::Range<usize>) -> Vec<Value> {
    range
        .map(|i| json!({ "email": format!("{tag}{i}@upgrade.io"), "name": format!("{tag} {i}") }))
        .collect()
}

fn request(account: &str, action_type: &str, data: Vec<Value>) -> Value {
    json!({ "accountId": account, "entityType": "contact", "actionType": action_type, "data": data })
}

fn in_ms(ms: i64) -> Result<String> {
    let at = domain::Timestamp::from_millis(infra::clock::now().millis() + ms)
        .context("a time near now")?;
    Ok(at.to_string())
}

/// Every answer the api gives about the fixture's actions and accounts, by path.
async fn answers(client: &ApiClient, actions: &BTreeMap<String, String>) -> Result<Value> {
    let mut paths: Vec<String> = [ACCOUNT_A, ACCOUNT_B]
        .iter()
        .map(|account| format!("/bulk-actions?accountId={account}&limit=100"))
        .collect();
    for id in actions.values() {
        paths.push(format!("/bulk-actions/{id}"));
        paths.push(format!("/bulk-actions/{id}/stats"));
        paths.push(format!("/bulk-actions/{id}/logs?limit=1000"));
    }
    let mut answers = serde_json::Map::new();
    for path in paths {
        let (status, body) = client.get_json(&path).await?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        answers.insert(path, body);
    }
    Ok(Value::Object(answers))
}

/// The answers without what grows with the clock: an unfinished action's stats measure its
/// duration up to now.
fn without_clock(answers: &Value) -> Value {
    let mut answers = answers.clone();
    if let Some(answers) = answers.as_object_mut() {
        for (path, answer) in answers.iter_mut() {
            let finished = matches!(
                answer["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            if let (true, false, Some(stats)) =
                (path.ends_with("/stats"), finished, answer.as_object_mut())
            {
                stats.remove("durationMs");
                stats.remove("recordsPerSecond");
            }
        }
    }
    answers
}

/// Whether `new` says everything `old` said: the same values, objects possibly with fields
/// a later build added (an additive change is compatible; a changed or missing one is not).
fn says_all_of(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => old
            .iter()
            .all(|(key, value)| new.get(key).is_some_and(|now| says_all_of(value, now))),
        (Value::Array(old), Value::Array(new)) => {
            old.len() == new.len() && old.iter().zip(new).all(|(a, b)| says_all_of(a, b))
        }
        _ => old == new,
    }
}

/// The first difference between two answer sets, path by path (fields added by the new
/// build are no difference).
fn first_difference(old: &Value, new: &Value) -> Option<String> {
    let (old, new) = (without_clock(old), without_clock(new));
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return Some("answers are not objects".into());
    };
    if old.len() != new.len() {
        return Some(format!("{} paths against {}", old.len(), new.len()));
    }
    old.iter().find_map(|(path, answer)| {
        (!new.get(path).is_some_and(|now| says_all_of(answer, now))).then(|| {
            format!(
                "GET {path}\n  before: {answer}\n  after:  {}",
                new.get(path).unwrap_or(&Value::Null)
            )
        })
    })
}

async fn wait_status(client: &ApiClient, action: &str, status: &str) -> Result<Value> {
    client
        .wait_view(action, WAIT, |view| view["status"] == status)
        .await
}

/// Every document of every collection, as canonical Extended JSON.
async fn dump_mongo(database: &mongodb::Database) -> Result<Value> {
    let mut dump = serde_json::Map::new();
    for name in database.list_collection_names().await? {
        let documents: Vec<Document> = database
            .collection::<Document>(&name)
            .find(mongodb::bson::doc! {})
            .sort(mongodb::bson::doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        let documents = documents
            .into_iter()
            .map(|document| Bson::Document(document).into_canonical_extjson())
            .collect();
        dump.insert(name, Value::Array(documents));
    }
    Ok(Value::Object(dump))
}

async fn load_mongo(database: &mongodb::Database, dump: &Value) -> Result<()> {
    for (name, documents) in dump.as_object().context("a dump is an object")? {
        let documents = documents
            .as_array()
            .context("a collection is an array")?
            .iter()
            .map(|json| match Bson::try_from(json.clone())? {
                Bson::Document(document) => Ok(document),
                other => anyhow::bail!("not a document: {other}"),
            })
            .collect::<Result<Vec<Document>>>()?;
        if !documents.is_empty() {
            database
                .collection::<Document>(name)
                .insert_many(documents)
                .await?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_deployment_answers_as_before_and_finishes_what_the_old_one_left() -> Result<()>
{
    let dir = fixture_dir();
    let expected = read_json(&dir.join("expected.json"))?;
    let actions: BTreeMap<String, String> = serde_json::from_value(expected["actions"].clone())?;
    let rdb = dir.join("redis.rdb");
    let services =
        tokio::task::spawn_blocking(move || Services::start_from_redis_dump(&rdb)).await??;
    let database = infra::mongo::connect(&services.mongodb_uri, "upgrade-fixture").await?;
    load_mongo(&database, &read_json(&dir.join("mongo.json"))?).await?;

    // No consumer yet: nothing moves while the answers are compared.
    let mut deployment = Deployment::start_with(services, options(), &[]).await?;
    let client = deployment.client.clone();
    for (account, key) in expected["keys"].as_object().context("keys")? {
        client.use_key(account, key.as_str().context("a key")?);
    }
    for (name, id) in &actions {
        let account = if name == "scheduled" || name == "queued" {
            ACCOUNT_B
        } else {
            ACCOUNT_A
        };
        client.remember_owner(id, account);
    }
    let before_upgrade = &expected["answers"];
    let difference = first_difference(before_upgrade, &answers(&client, &actions).await?);
    ensure!(
        difference.is_none(),
        "the upgraded api answers differently: {}",
        difference.unwrap_or_default()
    );

    // Carry every unfinished action to its end.
    deployment.start_consumer("c1")?;
    let (status, body) = client
        .post_json(
            &format!("/bulk-actions/{}/resume", actions["paused"]),
            &json!({}),
        )
        .await?;
    ensure!(status == 200, "resume: {status} {body}");
    // The old build changed its pace; a change of one part keeps the other.
    let (status, body) = client
        .patch_action(
            &actions["scheduled"],
            &json!({ "scheduledFor": in_ms(0)?, "maxRecordsPerMinute": 60_000 }),
        )
        .await?;
    ensure!(status == 200, "moving the start: {status} {body}");
    ensure!(
        body["pacing"] == json!({ "batchSize": 30, "intervalSeconds": 1 })
            && body["maxRecordsPerMinute"] == 60_000,
        "the old build's pacing is kept: {body}"
    );
    let finished = [("paused", 150), ("scheduled", 60), ("queued", 80)];
    for (name, records) in finished {
        let view = client.wait_projected_terminal(&actions[name], WAIT).await?;
        ensure!(
            view["status"] == "completed" && view["succeeded"] == records,
            "{name}: {view}"
        );
        let logs = client.all_logs(&actions[name]).await?;
        let outcomes: Vec<&str> = logs.iter().filter_map(|l| l["code"].as_str()).collect();
        ensure!(
            outcomes.len() == records && outcomes.iter().all(|o| *o == "created"),
            "{name}: every record created once, got {outcomes:?}"
        );
        let contacts = client
            .contacts()
            .count_documents(mongodb::bson::doc! {
                "email": { "$regex": format!("^{name}[0-9]+@upgrade\\.io$") }
            })
            .await?;
        ensure!(contacts == records as u64, "{name}: {contacts} contacts");
    }

    // The views the old projector began and the new one finished are the ones a replay of
    // the whole streams builds.
    deployment.kill_projector();
    let served = answers(&client, &actions).await?;
    deployment.replay().await?;
    deployment.start_projector()?;
    let difference = first_difference(&served, &answers(&client, &actions).await?);
    ensure!(
        difference.is_none(),
        "a replay builds other views: {}",
        difference.unwrap_or_default()
    );
    for name in ["completed", "cancelled"] {
        for path in [
            format!("/bulk-actions/{}", actions[name]),
            format!("/bulk-actions/{}/logs?limit=1000", actions[name]),
        ] {
            ensure!(
                says_all_of(&before_upgrade[&path], &served[&path]),
                "{name}: the replayed answer differs from the old build's at {path}"
            );
        }
    }
    Ok(())
}

/// Runs the binaries in `BULK_BINARIES_DIR` (an earlier build) through the fixture's story
/// and writes what they leave into `UPGRADE_FIXTURE` (see the module's comment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "records the fixture with an earlier build's binaries"]
async fn record_the_fixture() -> Result<()> {
    ensure!(
        std::env::var_os("BULK_BINARIES_DIR").is_some(),
        "set BULK_BINARIES_DIR to the earlier build's binaries"
    );
    let dir = fixture_dir();
    std::fs::create_dir_all(&dir)?;
    let mut deployment = Deployment::start(options(), &["c1"]).await?;
    let client = deployment.client.clone();
    let mut keys = serde_json::Map::new();
    for account in [ACCOUNT_A, ACCOUNT_B] {
        keys.insert(account.into(), client.key_for(account).await?.into());
    }
    let mut actions = BTreeMap::new();

    let mut data = people("completed", 0..115);
    data.extend(people("completed", 0..3).into_iter().map(|mut record| {
        record["name"] = json!("a later duplicate");
        record
    }));
    data.push(json!({ "email": "not-an-email", "name": "invalid" }));
    data.push(json!({ "name": "no email" }));
    let completed = client.submit(&request(ACCOUNT_A, "upsert", data)).await?;
    client.wait_projected_terminal(&completed, WAIT).await?;
    actions.insert("completed", completed);

    let mut body = request(ACCOUNT_A, "create", people("cancelled", 0..100));
    body["scheduledFor"] = json!(in_ms(3_600_000)?);
    let cancelled = client.submit(&body).await?;
    let (status, reply) = client
        .post_json(&format!("/bulk-actions/{cancelled}/cancel"), &json!({}))
        .await?;
    ensure!(status == 200, "cancel: {status} {reply}");
    client.wait_projected_terminal(&cancelled, WAIT).await?;
    actions.insert("cancelled", cancelled);

    let mut body = request(ACCOUNT_B, "create", people("scheduled", 0..60));
    body["scheduledFor"] = json!(in_ms(30 * 86_400_000)?);
    let scheduled = client.submit(&body).await?;
    let pacing = json!({ "pacing": { "batchSize": 30, "intervalSeconds": 1 } });
    let (status, reply) = client.patch_action(&scheduled, &pacing).await?;
    ensure!(status == 200, "pace: {status} {reply}");
    wait_status(&client, &scheduled, "scheduled").await?;
    actions.insert("scheduled", scheduled);

    // A paused action's batches already handed out are parked. With MongoDB frozen, the
    // only worker hangs on the first batch while the dispatcher hands out the others; the
    // consumer is frozen in turn while the api (which reads MongoDB) takes the pause.
    deployment.services.freeze_mongodb()?;
    let paused = client
        .submit(&request(ACCOUNT_A, "create", people("paused", 0..150)))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    deployment.freeze_consumer("c1")?;
    deployment.services.thaw_mongodb()?;
    let (status, reply) = client
        .post_json(&format!("/bulk-actions/{paused}/pause"), &json!({}))
        .await?;
    deployment.thaw_consumer("c1")?;
    ensure!(status == 200, "pause: {status} {reply}");
    wait_status(&client, &paused, "paused").await?;
    let id = domain::ActionId::parse(&paused).context("a ULID")?;
    let mut redis = redis::Client::open(deployment.services.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let parked_key = infra::Keys::new("test", 4).parked(id);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let parked: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&parked_key)
            .query_async(&mut redis)
            .await?;
        if parked.len() == 2 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the paused action's batches were not parked: {parked:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    actions.insert("paused", paused);

    deployment.kill_consumer("c1");
    let queued = client
        .submit(&request(ACCOUNT_B, "upsert", people("queued", 0..80)))
        .await?;
    wait_status(&client, &queued, "queued").await?;
    actions.insert("queued", queued);

    let actions: BTreeMap<String, String> = actions
        .into_iter()
        .map(|(name, id)| (name.to_owned(), id))
        .collect();
    // Lists are read from the views alone: wait until the projector has caught up.
    let mut answers = answers(&client, &actions).await?;
    let listed = |answers: &Value, account: &str| {
        answers[format!("/bulk-actions?accountId={account}&limit=100")]["total"].as_u64()
    };
    while (listed(&answers, ACCOUNT_A), listed(&answers, ACCOUNT_B)) != (Some(3), Some(2)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        answers = self::answers(&client, &actions).await?;
    }
    deployment.kill_api();
    deployment.kill_projector();
    deployment
        .services
        .save_redis_dump(&dir.join("redis.rdb"))?;
    write_json(
        &dir.join("mongo.json"),
        &dump_mongo(&client.database).await?,
    )?;
    write_json(
        &dir.join("expected.json"),
        &json!({ "keys": keys, "actions": actions, "answers": answers }),
    )?;
    Ok(())
}
