//! Bulk actions applied end to end: real api, consumers and projector over real Redis and
//! FerretDB. Every test checks the contacts collection itself, not only the counts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use bulk_tests::{codes, AppOptions, TestApp};
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const STATUSES: [&str; 2] = ["lead", "customer"];

fn action(account: &str, action_type: &str, data: Value) -> Value {
    json!({ "accountId": account, "entityType": "contact", "actionType": action_type, "data": data })
}

async fn contact(app: &TestApp, account: &str, email: &str) -> Result<Option<Document>> {
    Ok(app
        .contacts()
        .find_one(doc! { "accountId": account, "email": email })
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_type_changes_exactly_the_contacts_it_should() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    // Contacts we did not write: foreign _id shapes and fields we do not manage.
    let legacy_id = ObjectId::new();
    app.contacts()
        .insert_many([
            doc! { "_id": legacy_id, "accountId": "acme", "email": "legacy@x.io", "name": "Old", "crm": { "owner": "kim", "tags": ["vip"] } },
            doc! { "_id": "str-id-7", "accountId": "acme", "email": "gone@x.io", "name": "Bye" },
            doc! { "_id": 42, "accountId": "other", "email": "legacy@x.io", "name": "Other account" },
        ])
        .await?;

    let created = app
        .submit(&action(
            "acme",
            "create",
            json!([
                { "email": "Ann@X.io", "name": "Ann", "age": 30, "status": "lead" },
                { "email": "legacy@x.io", "name": "Must not overwrite" },
                { "email": "bob@x.io", "name": "Bob" },
            ]),
        ))
        .await?;
    let view = app.wait_projected_terminal(&created, WAIT).await?;
    assert_eq!(
        (view["succeeded"].as_u64(), view["skipped"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        codes(&app.all_logs(&created).await?),
        BTreeMap::from([
            (0, "created".into()),
            (1, "already_exists".into()),
            (2, "created".into()),
        ])
    );
    let ann = contact(&app, "acme", "ann@x.io")
        .await?
        .expect("ann created");
    assert_eq!(ann.get_str("name")?, "Ann");
    assert_eq!(ann.get_i64("age")?, 30);
    assert!(ann.get_datetime("createdAt").is_ok() && ann.get_datetime("updatedAt").is_ok());
    assert_eq!(
        contact(&app, "acme", "legacy@x.io")
            .await?
            .expect("legacy")
            .get_str("name")?,
        "Old"
    );

    let updated = app
        .submit(&action(
            "acme",
            "update",
            json!([
                { "email": "LEGACY@x.io ", "status": "customer" },
                { "email": "ann@x.io", "name": "Ann B." },
                { "email": "nobody@x.io", "name": "Nobody" },
            ]),
        ))
        .await?;
    let view = app.wait_projected_terminal(&updated, WAIT).await?;
    assert_eq!(
        (view["succeeded"].as_u64(), view["failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(view["byReason"], json!({ "not_found": 1 }));
    let legacy = contact(&app, "acme", "legacy@x.io").await?.expect("legacy");
    assert_eq!(
        legacy.get_object_id("_id")?,
        legacy_id,
        "the _id is never rewritten"
    );
    assert_eq!(legacy.get_str("status")?, "customer");
    assert_eq!(
        legacy.get_str("name")?,
        "Old",
        "fields not in the record are kept"
    );
    assert_eq!(
        legacy.get_document("crm")?,
        &doc! { "owner": "kim", "tags": ["vip"] },
        "unmanaged fields are kept"
    );
    assert!(
        contact(&app, "acme", "nobody@x.io").await?.is_none(),
        "update never creates"
    );
    let other = contact(&app, "other", "legacy@x.io")
        .await?
        .expect("other account's contact");
    assert_eq!(other.get_str("name")?, "Other account");
    assert!(
        other.get("status").is_none(),
        "another account is never touched"
    );

    let upserted = app
        .submit(&action(
            "acme",
            "upsert",
            json!([
                { "email": "ann@x.io", "age": 31 },
                { "email": "new@x.io", "name": "New", "status": "lead" },
            ]),
        ))
        .await?;
    app.wait_projected_terminal(&upserted, WAIT).await?;
    assert_eq!(
        codes(&app.all_logs(&upserted).await?),
        BTreeMap::from([(0, "updated".into()), (1, "created".into()),])
    );
    let ann = contact(&app, "acme", "ann@x.io").await?.expect("ann");
    assert_eq!(
        (
            ann.get_str("name")?,
            ann.get_i64("age")?,
            ann.get_str("status")?
        ),
        ("Ann B.", 31, "lead")
    );
    assert_eq!(
        contact(&app, "acme", "new@x.io")
            .await?
            .expect("new")
            .get_str("name")?,
        "New"
    );

    let deleted = app
        .submit(&action(
            "acme",
            "delete",
            json!([
                { "email": "gone@x.io" }, { "email": "never@x.io" }, { "email": "legacy@x.io" },
            ]),
        ))
        .await?;
    let view = app.wait_projected_terminal(&deleted, WAIT).await?;
    assert_eq!(
        (view["succeeded"].as_u64(), view["failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(contact(&app, "acme", "gone@x.io").await?.is_none());
    assert!(contact(&app, "acme", "legacy@x.io").await?.is_none());
    assert!(
        contact(&app, "other", "legacy@x.io").await?.is_some(),
        "delete is scoped by account"
    );

    let remaining: BTreeSet<String> = {
        use futures::TryStreamExt;
        let docs: Vec<Document> = app
            .contacts()
            .find(doc! { "accountId": "acme" })
            .await?
            .try_collect()
            .await?;
        docs.iter()
            .map(|d| d.get_str("email").unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        remaining,
        BTreeSet::from(["ann@x.io".into(), "bob@x.io".into(), "new@x.io".into()])
    );

    // The same streams, replayed into empty views, give the very same documents.
    let before = (
        app.all_docs(infra::mongo::ACTION_VIEWS).await?,
        app.all_docs(infra::mongo::LOG_VIEWS).await?,
    );
    let mut app = app;
    app.stop_projector().await;
    let report = app.replay().await?;
    assert_eq!(report.actions, 4);
    let after = (
        app.all_docs(infra::mongo::ACTION_VIEWS).await?,
        app.all_docs(infra::mongo::LOG_VIEWS).await?,
    );
    assert_eq!(before.0, after.0);
    assert_eq!(before.1, after.1);
    let mut lines = 0;
    for bucket in &after.1 {
        lines += serde_json::from_str::<Vec<Value>>(bucket.get_str("lines")?)?.len();
    }
    assert_eq!(lines, 11, "one log line per submitted record");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_invalid_records_are_settled_and_never_written() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let id = app
        .submit(&action(
            "acme",
            "upsert",
            json!([
                { "email": "dup@x.io", "name": "first" },
                { "email": "  DUP@X.IO ", "name": "second" },
                { "email": "dup@x.io", "name": "third" },
                { "email": "op@x.io", "$set": { "accountId": "other" } },
                { "email": "dot@x.io", "name.first": "x" },
                { "email": "obj@x.io", "name": { "$gt": "" } },
                { "email": "age@x.io", "age": "31" },
                { "email": "old@x.io", "age": 151 },
                { "email": "extra@x.io", "phone": "555" },
                { "name": "no email" },
                "not an object",
                { "email": "not-an-email" },
                { "email": "ok@x.io", "age": 0, "status": "" },
            ]),
        ))
        .await?;
    let view = app.wait_projected_terminal(&id, WAIT).await?;
    assert_eq!(view["totalRecords"], 13);
    assert_eq!(
        (
            view["succeeded"].as_u64(),
            view["failed"].as_u64(),
            view["skipped"].as_u64()
        ),
        (Some(2), Some(9), Some(2))
    );
    assert_eq!(
        view["byReason"],
        json!({
            "duplicate_email": 2, "forbidden_field_name": 2, "invalid_type": 2, "invalid_value": 1,
            "unknown_field": 1, "missing_email": 1, "not_an_object": 1, "invalid_email": 1,
        })
    );
    let logs = app.all_logs(&id).await?;
    assert_eq!(logs.len(), 13);
    assert_eq!(logs[1]["code"], "duplicate_email");
    assert_eq!(logs[1]["email"], "dup@x.io");
    assert_eq!(logs[3]["code"], "forbidden_field_name");
    let (status, stats) = app.get_json(&format!("/bulk-actions/{id}/stats")).await?;
    assert_eq!(status, 200);
    assert_eq!(stats["processed"], 13);

    let written = app.contacts().count_documents(doc! {}).await?;
    assert_eq!(written, 2, "only the valid first occurrences are written");
    let dup = contact(&app, "acme", "dup@x.io").await?.expect("dup");
    assert_eq!(dup.get_str("name")?, "first");
    assert!(
        app.contacts()
            .count_documents(doc! { "accountId": "other" })
            .await?
            == 0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_share_a_20k_record_action_with_exact_results() -> Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        consumers: 2,
        batch_size: 500,
        ..AppOptions::default()
    })
    .await?;
    let records: Vec<Value> = (0..20_000)
        .map(|i| json!({ "email": format!("user{i}@big.io"), "name": format!("User {i}"), "age": i % 100, "status": STATUSES[i % 2] }))
        .collect();
    let id = app
        .submit(&action("big", "upsert", Value::Array(records)))
        .await?;
    let view = app
        .wait_projected_terminal(&id, Duration::from_secs(240))
        .await?;
    assert_eq!(
        (
            view["succeeded"].as_u64(),
            view["failed"].as_u64(),
            view["skipped"].as_u64()
        ),
        (Some(20_000), Some(0), Some(0))
    );
    assert_eq!(view["batchesProcessed"], 40);
    let at = |field: &str| {
        view[field]
            .as_str()
            .and_then(domain::Timestamp::parse_rfc3339)
            .map(|t| t.millis())
            .unwrap_or_default()
    };
    println!(
        "20,000-record upsert, two consumers: accepted to completed in {} ms",
        at("completedAt") - at("createdAt")
    );

    use futures::TryStreamExt;
    let contacts: Vec<Document> = app
        .contacts()
        .find(doc! { "accountId": "big" })
        .await?
        .try_collect()
        .await?;
    assert_eq!(contacts.len(), 20_000);
    for contact in &contacts {
        let email = contact.get_str("email")?;
        let i: i64 = email
            .trim_start_matches("user")
            .trim_end_matches("@big.io")
            .parse()?;
        assert_eq!(contact.get_str("name")?, format!("User {i}"));
        assert_eq!(contact.get("age"), Some(&Bson::Int64(i % 100)));
        assert_eq!(contact.get_str("status")?, STATUSES[(i % 2) as usize]);
    }
    let logs = app.all_logs(&id).await?;
    assert_eq!(logs.len(), 20_000);
    assert!(logs
        .iter()
        .enumerate()
        .all(|(i, line)| line["index"] == i && line["code"] == "created"));

    // Both consumer processes took part.
    let store = infra::EventStore::new(
        infra::redis_conn::shared(app.redis_url()).await?,
        infra::Keys::new("test", 4),
    );
    let action_id = domain::ActionId::parse(&id).expect("ulid");
    let events = bulk_tests::all_events(&store, action_id).await?;
    let appliers: BTreeSet<String> = events
        .iter()
        .filter_map(|event| match &event.envelope.payload {
            domain::EventPayload::BatchProcessed { consumer, .. } => Some(consumer.clone()),
            _ => None,
        })
        .map(|worker| {
            worker
                .rsplit_once('-')
                .map(|(process, _)| process.to_owned())
                .unwrap_or(worker)
        })
        .collect();
    assert_eq!(
        appliers,
        BTreeSet::from(["test-consumer-0".into(), "test-consumer-1".into()])
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.envelope.payload.type_name() == "Completed")
            .count(),
        1
    );

    let before = app.all_docs(infra::mongo::ACTION_VIEWS).await?;
    app.stop_projector().await;
    app.replay().await?;
    assert_eq!(before, app.all_docs(infra::mongo::ACTION_VIEWS).await?);
    assert_eq!(app.stored_log_lines(&id).await?.len(), 20_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_action_waits_for_its_time() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let start = chrono_in(Duration::from_millis(2500));
    let (status, view) = app
        .post_json(
            "/bulk-actions",
            &json!({
                "accountId": "acme", "entityType": "contact", "actionType": "upsert",
                "data": [{ "email": "later@x.io", "name": "Later" }], "scheduledFor": start,
            }),
        )
        .await?;
    assert_eq!(status, 202);
    assert_eq!(view["status"], "scheduled");
    let id = view["actionId"].as_str().unwrap_or_default().to_owned();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, early) = app.get_json(&format!("/bulk-actions/{id}")).await?;
    assert_eq!(early["status"], "scheduled");
    assert!(contact(&app, "acme", "later@x.io").await?.is_none());
    let done = app.wait_projected_terminal(&id, WAIT).await?;
    assert_eq!(done["status"], "completed");
    assert!(done["startedAt"].as_str().unwrap_or_default() >= start.as_str());
    assert!(contact(&app, "acme", "later@x.io").await?.is_some());
    Ok(())
}

fn chrono_in(delay: Duration) -> String {
    let at = std::time::SystemTime::now() + delay;
    let millis = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    domain::Timestamp::from_millis(millis)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Streams are never rewritten, so events of schema version 1 stay in them for good. This
/// writes an action exactly as a v1 build stored it (raw stream entries, `appliedBy` in
/// `BatchProcessed`) and requires the api's read path, the live projector and a replay to
/// read it through the upcaster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_by_schema_version_1_are_upcast_on_read() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        consumers: 0,
        ..AppOptions::default()
    })
    .await?;
    let keys = infra::Keys::new("test", 4);
    let action = domain::ActionId::from_ulid(ulid::Ulid::new());
    let id = action.to_string();
    let partition = keys.partition_of(action);
    let v1_events = [
        (
            "Created",
            r#"{"accountId":"legacy","entityType":"contact","actionType":"update","totalRecords":2,"batchCount":1,"scheduledFor":null}"#,
        ),
        ("Started", "{}"),
        (
            "BatchProcessed",
            r#"{"batch":0,"outcomes":[{"index":0,"email":"a@legacy.io","code":"updated"},{"index":1,"email":"b@legacy.io","code":"not_found","message":"no contact with this email in the account"}],"appliedBy":"old-host-1-0"}"#,
        ),
        ("Completed", "{}"),
    ];
    let mut conn = infra::redis_conn::shared(app.redis_url()).await?;
    let mut pipe = redis::pipe();
    for (seq, (type_name, data)) in (1u64..).zip(v1_events) {
        let at = format!("2025-01-01T00:00:0{seq}.000Z");
        pipe.xadd(
            keys.events(action),
            "*",
            &[
                ("id", ulid::Ulid::new().to_string()),
                ("action", id.clone()),
                ("seq", seq.to_string()),
                ("v", "1".to_owned()),
                ("type", type_name.to_owned()),
                ("at", at),
                ("data", data.to_owned()),
            ],
        )
        .ignore();
    }
    pipe.hset_multiple(
        keys.meta(action),
        &[
            ("seq", "4"),
            ("account", "legacy"),
            ("actionType", "update"),
            ("entityType", "contact"),
            ("batches", "1"),
            ("done", "1"),
        ],
    )
    .ignore()
    .zadd(keys.actions(partition), &id, 1_735_689_600_000i64)
    .ignore()
    .xadd(
        keys.feed(partition),
        "*",
        &[("action", &id), ("seq", &"4".to_owned())],
    )
    .ignore();
    pipe.exec_async(&mut conn).await?;

    // The live projector picks it up from the feed.
    let view = app.wait_projected_terminal(&id, WAIT).await?;
    assert_eq!(view["status"], "completed");
    assert_eq!(
        (view["succeeded"].as_u64(), view["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(view["byReason"]["not_found"], 1);
    let store = infra::EventStore::new(conn, keys);
    let events = store.read(action, None, 10).await?;
    assert!(matches!(
        &events[2].envelope.payload,
        domain::EventPayload::BatchProcessed { consumer, attempt: 1, .. } if consumer == "old-host-1-0"
    ));
    assert_eq!(events[2].envelope.schema_version, 1);
    let logs = app.all_logs(&id).await?;
    assert_eq!(
        codes(&logs),
        BTreeMap::from([(0, "updated".into()), (1, "not_found".into())])
    );

    // A replay reads the same old events into the same view.
    let before = app.all_docs(infra::mongo::ACTION_VIEWS).await?;
    let mut app = app;
    app.stop_projector().await;
    app.replay().await?;
    assert_eq!(before, app.all_docs(infra::mongo::ACTION_VIEWS).await?);
    Ok(())
}

/// A consumer that dies after its writes landed but before it recorded them leaves the
/// batch to a second attempt that finds the store already changed. Whatever the action
/// type, the second attempt must report what the first one did. Here the first attempt
/// runs to the end and is simply not recorded, which is that crash at its worst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_attempt_reports_what_the_first_one_did() -> Result<()> {
    use consumer::{DocumentWriter, Target};
    use domain::{AccountId, ActionType, EntityType};

    let app = TestApp::spawn(AppOptions {
        consumers: 0,
        ..AppOptions::default()
    })
    .await?;
    infra::mongo::ensure_entity_indexes(&app.database).await?;
    let writer = DocumentWriter::new(app.database.clone());
    let store = infra::EventStore::new(
        infra::redis_conn::shared(app.redis_url()).await?,
        infra::Keys::new("test", 4),
    );
    let account = AccountId::parse("retry").expect("valid");
    // An existing contact, so that upsert and create meet one they did not make.
    app.contacts()
        .insert_one(doc! { "accountId": "retry", "email": "old@retry.io", "name": "Old" })
        .await?;
    let records: Vec<Value> = ["new1@retry.io", "new2@retry.io", "old@retry.io"]
        .iter()
        .map(|email| json!({ "email": email, "name": "N" }))
        .collect();

    let mut expectations = vec![
        (ActionType::Upsert, ["created", "created", "updated"]),
        (ActionType::Create, ["created", "created", "already_exists"]),
        (ActionType::Update, ["updated", "updated", "updated"]),
        (ActionType::Delete, ["deleted", "deleted", "deleted"]),
    ];
    for (action_type, expected) in expectations.drain(..) {
        if action_type == ActionType::Create {
            // Start create from the same store state upsert met.
            app.contacts()
                .delete_many(doc! { "email": { "$in": ["new1@retry.io", "new2@retry.io"] } })
                .await?;
        }
        let action = domain::ActionId::from_ulid(ulid::Ulid::new());
        let plan = domain::plan_action(&records, action_type, 100);
        let batch = &plan.batches[0];
        let item = infra::work::WorkItem {
            stream: "unused".into(),
            entry_id: "0-1".into(),
            action_id: action,
            batch: 0,
        };
        let settlement = infra::Settlement::new(store.clone());
        let memory = consumer::BatchInRedis {
            store: &settlement,
            item: &item,
        };
        let mut reports = Vec::new();
        for attempt in [1, 2] {
            let target = Target {
                account: &account,
                action,
                action_type,
                entity: EntityType::Contact,
                attempt,
            };
            let outcomes = writer.apply(target, batch, &memory).await?;
            reports.push(
                outcomes
                    .iter()
                    .map(|o| o.code.as_str().to_owned())
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(reports[0], expected, "{action_type:?}, first attempt");
        assert_eq!(reports[1], expected, "{action_type:?}, second attempt");
    }
    assert_eq!(
        app.contacts()
            .count_documents(doc! { "accountId": "retry" })
            .await?,
        0
    );

    // An upsert by an external id (updates first, then inserts what it did not find).
    let mut definitions = domain::fields::FieldDefinitions::parse(
        &json!({ "fields": [{ "name": "sfId", "type": "string", "unique": true }] }),
        EntityType::Contact,
    )?;
    definitions.fields[0].slot = Some(1);
    let sf = domain::MatchBy::ExternalId {
        field: "sfId".into(),
        slot: 1,
    };
    app.contacts()
        .insert_many([
            doc! { "accountId": "retry", "email": "s-old@retry.io", "_externalId1": "S-OLD" },
            doc! { "accountId": "retry", "email": "s-taken@retry.io" },
        ])
        .await?;
    let records = vec![
        json!({ "sfId": "S-OLD", "email": "s-old@retry.io", "name": "Old" }),
        json!({ "sfId": "S-NEW", "email": "s-new@retry.io", "name": "New" }),
        json!({ "sfId": "S-TAKEN", "email": "s-taken@retry.io", "name": "Taken" }),
    ];
    let rules = domain::RecordRules::new(EntityType::Contact, ActionType::Upsert, sf, &definitions);
    let plan = domain::plan_with(&records, rules, 100);
    let action = domain::ActionId::from_ulid(ulid::Ulid::new());
    let item = infra::work::WorkItem {
        stream: "unused".into(),
        entry_id: "0-1".into(),
        action_id: action,
        batch: 0,
    };
    let settlement = infra::Settlement::new(store.clone());
    let memory = consumer::BatchInRedis {
        store: &settlement,
        item: &item,
    };
    for attempt in [1, 2] {
        let target = Target {
            account: &account,
            action,
            action_type: ActionType::Upsert,
            entity: EntityType::Contact,
            attempt,
        };
        let codes: Vec<&str> = writer
            .apply(target, &plan.batches[0], &memory)
            .await?
            .iter()
            .map(|o| o.code.as_str())
            .collect();
        assert_eq!(
            codes,
            ["updated", "created", "already_exists"],
            "upsert by sfId, attempt {attempt}"
        );
    }
    let taken = contact(&app, "retry", "s-taken@retry.io")
        .await?
        .context("taken")?;
    assert!(!taken.contains_key("name"), "left alone: {taken}");
    Ok(())
}

/// Retention: a finished action's events leave Redis for the MongoDB archive; the action
/// still reads, refuses control commands and answers idempotent resubmissions as before,
/// and a replay rebuilds the very same views from the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_actions_past_retention_leave_redis_and_replay_from_the_archive() -> Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        batch_size: 4,
        ..AppOptions::default()
    })
    .await?;
    let data: Vec<Value> = (0..30)
        .map(|i| match i % 10 {
            3 => json!({ "email": "broken" }),
            7 => json!({ "email": format!("U{}@Keep.io", i - 1) }),
            _ => json!({ "email": format!("u{i}@keep.io"), "name": format!("U {i}") }),
        })
        .collect();
    let body = action("keep", "upsert", Value::Array(data));
    let key = [("idempotency-key", "retention-1")];
    let first = app
        .send(reqwest::Method::POST, "/bulk-actions", Some(&body), &key)
        .await?;
    assert_eq!(first.status, 202, "{}", first.body);
    let finished = first.body["actionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let finished_view = app.wait_projected_terminal(&finished, WAIT).await?;
    // An action that has not finished: retention leaves it alone.
    let mut waiting_body = action("keep", "upsert", json!([{ "email": "later@keep.io" }]));
    let in_twenty_days =
        domain::Timestamp::from_millis(infra::clock::now().millis() + 20 * 86_400_000);
    waiting_body["scheduledFor"] = json!(in_twenty_days.map(|at| at.to_string()));
    let waiting = app.submit(&waiting_body).await?;
    let mut conn = infra::redis_conn::shared(app.redis_url()).await?;
    let keys = infra::Keys::new("test", 4);
    let finished_id = domain::ActionId::parse(&finished).expect("an action id");
    let waiting_id = domain::ActionId::parse(&waiting).expect("an action id");
    let stream_len = |conn: &mut infra::redis_conn::Shared, action| {
        let key = keys.events(action);
        let mut conn = conn.clone();
        async move { redis::AsyncCommands::xlen::<_, u64>(&mut conn, key).await }
    };
    assert!(stream_len(&mut conn, finished_id).await? > 0);
    // Wait until the scheduled action's view exists, so the views compare whole.
    let deadline = std::time::Instant::now() + WAIT;
    while app
        .database
        .collection::<Document>(infra::mongo::ACTION_VIEWS)
        .find_one(doc! { "_id": &waiting })
        .await?
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "scheduled action never projected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let report = projector::archive(&app.projector_config(), 0).await?;
    assert_eq!(report.actions, 1, "only the finished action is archived");
    assert_eq!(stream_len(&mut conn, finished_id).await?, 0);
    assert!(stream_len(&mut conn, waiting_id).await? > 0);
    let meta: std::collections::HashMap<String, String> =
        redis::AsyncCommands::hgetall(&mut conn, keys.meta(finished_id)).await?;
    assert_eq!(
        meta.get("archived").map(String::as_str),
        Some("1"),
        "{meta:?}"
    );
    assert!(
        meta.len() <= 12,
        "a tombstone, not the bookkeeping: {meta:?}"
    );
    let tombstone_bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(keys.meta(finished_id))
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await?;
    eprintln!("an archived action keeps a {tombstone_bytes}-byte tombstone in redis");
    assert!(tombstone_bytes < 512, "{tombstone_bytes} bytes");
    // Archiving again changes nothing.
    assert_eq!(
        projector::archive(&app.projector_config(), 0)
            .await?
            .actions,
        0
    );

    // Reads, control and resubmission behave as before.
    let (status, view) = app.get_json(&format!("/bulk-actions/{finished}")).await?;
    assert_eq!((status, &view), (200, &finished_view));
    let logs = app.all_logs(&finished).await?;
    assert_eq!(logs.len(), 30);
    let (status, refused) = app
        .post_json(&format!("/bulk-actions/{finished}/cancel"), &json!({}))
        .await?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("action_finished"))
    );
    let again = app
        .send(reqwest::Method::POST, "/bulk-actions", Some(&body), &key)
        .await?;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.body["actionId"].as_str(), Some(finished.as_str()));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    // A replay reads the archived action from the archive: the same documents.
    let before = (
        app.all_docs(infra::mongo::ACTION_VIEWS).await?,
        app.all_docs(infra::mongo::LOG_VIEWS).await?,
    );
    app.stop_projector().await;
    assert_eq!(app.replay().await?.actions, 2);
    assert_eq!(before.0, app.all_docs(infra::mongo::ACTION_VIEWS).await?);
    assert_eq!(before.1, app.all_docs(infra::mongo::LOG_VIEWS).await?);
    Ok(())
}

/// `projector repartition`: on a drained deployment, every finished action's keys move to
/// where a new partition count looks for them, limits follow their accounts, and a replay
/// under the new count rebuilds the very same views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_deployment_moves_to_another_partition_count() -> Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        batch_size: 3,
        ..AppOptions::default()
    })
    .await?;
    let mut ids = Vec::new();
    for account in ["north", "south", "east", "west", "up"] {
        let data: Vec<Value> = (0..7)
            .map(|i| json!({ "email": format!("p{i}@{account}.io"), "name": "n" }))
            .collect();
        ids.push(
            app.submit(&action(account, "upsert", Value::Array(data)))
                .await?,
        );
    }
    let keyed_body = action("north", "create", json!([{ "email": "k@north.io" }]));
    let keyed = [("idempotency-key", "before-the-move")];
    let keyed_reply = app
        .send(
            reqwest::Method::POST,
            "/bulk-actions",
            Some(&keyed_body),
            &keyed,
        )
        .await?;
    assert_eq!(keyed_reply.status, 202, "{}", keyed_reply.body);
    ids.push(
        keyed_reply.body["actionId"]
            .as_str()
            .context("an action id")?
            .to_owned(),
    );
    for id in &ids {
        app.wait_projected_terminal(id, WAIT).await?;
    }
    let (status, _) = app
        .send(
            reqwest::Method::PUT,
            "/admin/accounts/north/limits",
            Some(&json!({ "recordsPerMinute": 777 })),
            &[(
                "authorization",
                &format!("Bearer {}", bulk_tests::TEST_ADMIN_TOKEN),
            )],
        )
        .await
        .map(|reply| (reply.status, reply.body))?;
    assert_eq!(status, 200);
    let north_key = format!("Bearer {}", app.key_for("north").await?);
    let put = app
        .send(
            reqwest::Method::PUT,
            "/fields/company",
            Some(&json!({ "fields": [{ "name": "crmId", "type": "string", "unique": true }] })),
            &[("authorization", north_key.as_str())],
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let before = (
        app.all_docs(infra::mongo::ACTION_VIEWS).await?,
        app.all_docs(infra::mongo::LOG_VIEWS).await?,
    );
    app.stop_consumers().await;
    app.stop_projector().await;

    // Something still queued refuses the move.
    let mut config = app.projector_config();
    let old_keys = infra::Keys::new("test", config.store.partitions);
    let new_keys = infra::Keys::new("test", 7);
    let mut conn = infra::redis_conn::shared(app.redis_url()).await?;
    let _: () = redis::AsyncCommands::zadd(&mut conn, old_keys.schedule(0), "x", 1).await?;
    assert!(matches!(
        projector::repartition(&config, 7).await,
        Err(projector::repartition::RepartitionError::NotDrained(_))
    ));
    let _: () = redis::AsyncCommands::zrem(&mut conn, old_keys.schedule(0), "x").await?;

    let report = projector::repartition(&config, 7).await?;
    assert_eq!(report.actions, 6);
    let store = infra::EventStore::new(conn.clone(), new_keys.clone());
    for id in &ids {
        let action = domain::ActionId::parse(id).expect("an action id");
        assert!(
            store.meta(action).await?.is_some(),
            "{id} under 7 partitions"
        );
        let moved = old_keys.partition_of(action) != new_keys.partition_of(action);
        if moved {
            let old: bool =
                redis::AsyncCommands::exists(&mut conn, old_keys.events(action)).await?;
            assert!(!old, "{id} left behind");
        }
    }
    let north = domain::AccountId::parse("north").expect("an account");
    let limit: Option<String> = redis::AsyncCommands::hget(
        &mut conn,
        new_keys.limits(new_keys.account_partition(&north), &north),
        "recordsPerMinute",
    )
    .await?;
    assert_eq!(limit.as_deref(), Some("777"));
    // The account's fields and its external id slots followed it.
    let fields = store
        .field_definitions(&north, domain::EntityType::Company)
        .await?;
    assert_eq!(fields.fields.len(), 1, "{fields:?}");
    assert_eq!(fields.fields[0].slot, Some(1));
    assert_eq!(
        store
            .external_id_slots(&north, domain::EntityType::Company)
            .await?,
        vec![(1, "crmId".to_owned())]
    );
    // Running it again moves nothing more.
    assert_eq!(projector::repartition(&config, 7).await?.keys_moved, 0);

    // The reservation followed its account, with its expiry.
    let reservations: Vec<String> = redis::cmd("KEYS")
        .arg("test:*idem:*")
        .query_async(&mut conn)
        .await?;
    let home = format!("test:{{{}}}:idem:", new_keys.account_partition(&north));
    assert!(
        reservations.len() == 1 && reservations[0].starts_with(&home),
        "{reservations:?} under {home}"
    );
    let ttl: i64 = redis::AsyncCommands::ttl(&mut conn, &reservations[0]).await?;
    assert!(ttl > 0, "the reservation lost its expiry: {ttl}");

    config.store.partitions = 7;
    assert_eq!(projector::replay(&config).await?.actions, 6);
    assert_eq!(before.0, app.all_docs(infra::mongo::ACTION_VIEWS).await?);
    assert_eq!(before.1, app.all_docs(infra::mongo::LOG_VIEWS).await?);
    Ok(())
}

/// `null` (JSON, NDJSON) and `#N/A` (CSV) remove a field with `$unset`; an absent field or
/// an empty cell leaves it; a create or upsert that inserts has nothing to remove; fields
/// the platform does not manage are never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_and_the_csv_marker_clear_fields_and_nothing_else() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let seeded = |email: &str| {
        doc! {
            "_id": ObjectId::new(), "accountId": "clear", "email": email, "name": "Kept",
            "age": 40_i64, "status": "lead", "crm": { "owner": "kim" },
        }
    };
    app.contacts()
        .insert_many([seeded("json@x.io"), seeded("nd@x.io"), seeded("csv@x.io")])
        .await?;

    let json_action = app
        .submit(&action(
            "clear",
            "update",
            json!([{ "email": "json@x.io", "age": null, "status": null }]),
        ))
        .await?;
    let ndjson = "{\"email\":\"nd@x.io\",\"name\":null,\"status\":\"customer\"}\n\
                  {\"email\":\"new-nd@x.io\",\"name\":null,\"status\":\"lead\"}\n";
    let (status, nd_reply) = app
        .post_raw(
            "/bulk-actions?accountId=clear&entityType=contact&actionType=upsert",
            "application/x-ndjson",
            ndjson.as_bytes().to_vec(),
        )
        .await?;
    assert_eq!(status, 202, "{nd_reply}");
    let csv = "email,name,age,status\ncsv@x.io,,#N/A,\n";
    let (status, csv_reply) = app
        .post_raw(
            "/bulk-actions?accountId=clear&entityType=contact&actionType=update",
            "text/csv",
            csv.as_bytes().to_vec(),
        )
        .await?;
    assert_eq!(status, 202, "{csv_reply}");
    for id in [
        json_action.as_str(),
        nd_reply["actionId"].as_str().context("ndjson action")?,
        csv_reply["actionId"].as_str().context("csv action")?,
    ] {
        let view = app.wait_projected_terminal(id, WAIT).await?;
        assert_eq!(view["failed"], 0, "{view}");
    }

    let fields = |contact: &Document| -> BTreeSet<String> {
        contact
            .keys()
            .filter(|key| !matches!(key.as_str(), "_id" | "createdAt" | "updatedAt"))
            .cloned()
            .collect()
    };
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let json_contact = contact(&app, "clear", "json@x.io").await?.context("json")?;
    assert_eq!(
        fields(&json_contact),
        set(&["accountId", "email", "name", "crm"])
    );
    assert_eq!(json_contact.get_str("name")?, "Kept");
    assert_eq!(json_contact.get_document("crm")?, &doc! { "owner": "kim" });

    let nd_contact = contact(&app, "clear", "nd@x.io").await?.context("nd")?;
    assert_eq!(
        fields(&nd_contact),
        set(&["accountId", "email", "age", "status", "crm"])
    );
    assert_eq!(nd_contact.get_str("status")?, "customer");
    // Inserted by the upsert: a clear has nothing to remove, the value is set.
    let new_nd = contact(&app, "clear", "new-nd@x.io")
        .await?
        .context("new")?;
    assert!(!new_nd.contains_key("name"), "{new_nd}");
    assert_eq!(new_nd.get_str("status")?, "lead");

    let csv_contact = contact(&app, "clear", "csv@x.io").await?.context("csv")?;
    assert_eq!(
        fields(&csv_contact),
        set(&["accountId", "email", "name", "status", "crm"]),
        "#N/A clears age, empty cells leave name and status"
    );
    assert_eq!(csv_contact.get_str("status")?, "lead");
    Ok(())
}

/// An account's own fields (`PUT /fields/contact`) on its contacts: a value of every type
/// set, checked against its limits, cleared; a list replaced, added to and taken from; the
/// same through CSV; fields nobody named left as they were; and `Created` keeps the
/// definition the records were checked against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_fields_of_every_type_are_checked_and_written() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let key = format!("Bearer {}", app.key_for("own").await?);
    let auth = [("authorization", key.as_str())];
    let definition = json!({ "fields": [
        { "name": "tier", "type": "string", "enum": ["gold", "silver"] },
        { "name": "seats", "type": "integer", "min": 1, "max": 500 },
        { "name": "score", "type": "number" },
        { "name": "vip", "type": "boolean" },
        { "name": "renewsOn", "type": "date" },
        { "name": "tags", "type": "string[]", "maxLength": 16 },
    ]});
    let put = app
        .send(
            reqwest::Method::PUT,
            "/fields/contact",
            Some(&definition),
            &auth,
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    app.contacts()
        .insert_one(doc! {
            "_id": ObjectId::new(), "accountId": "own", "email": "old@x.io", "name": "Old",
            "tier": "silver", "vip": true, "tags": ["trial", "beta"], "crm": { "owner": "kim" },
        })
        .await?;

    let upserted = app
        .submit(&action(
            "own",
            "upsert",
            json!([
                { "email": "old@x.io", "tier": "gold", "vip": null, "seats": 12,
                  "tags": { "add": ["vip"], "remove": ["trial"] } },
                { "email": "new@x.io", "score": 0.75, "renewsOn": "2027-01-31",
                  "tags": ["a", "b", "a"] },
                { "email": "bad@x.io", "seats": 0 },
                { "email": "bad2@x.io", "tier": "bronze" },
                { "email": "bad3@x.io", "nickname": "n" },
            ]),
        ))
        .await?;
    let view = app.wait_projected_terminal(&upserted, WAIT).await?;
    assert_eq!(
        codes(&app.all_logs(&upserted).await?),
        BTreeMap::from([
            (0, "updated".into()),
            (1, "created".into()),
            (2, "invalid_value".into()),
            (3, "invalid_value".into()),
            (4, "unknown_field".into()),
        ]),
        "{view}"
    );
    let old = contact(&app, "own", "old@x.io").await?.context("old")?;
    assert_eq!(old.get_str("tier")?, "gold");
    assert!(!old.contains_key("vip"), "cleared: {old}");
    assert_eq!(old.get_i64("seats")?, 12);
    let tags: BTreeSet<&str> = old
        .get_array("tags")?
        .iter()
        .filter_map(Bson::as_str)
        .collect();
    assert_eq!(tags, BTreeSet::from(["beta", "vip"]));
    assert_eq!(old.get_str("name")?, "Old");
    assert_eq!(old.get_document("crm")?, &doc! { "owner": "kim" });
    let new = contact(&app, "own", "new@x.io").await?.context("new")?;
    assert_eq!(new.get_f64("score")?, 0.75);
    assert_eq!(
        new.get_datetime("renewsOn")?.timestamp_millis(),
        domain::Timestamp::parse_rfc3339("2027-01-31T00:00:00Z")
            .context("a date")?
            .millis()
    );
    assert_eq!(
        new.get_array("tags")?,
        &vec![Bson::from("a"), Bson::from("b")]
    );

    // The same account's CSV: its own columns, typed by their definition.
    let csv = "email,Seats,VIP,tags,tier\nold@x.io,40,false,x;y,#N/A\n";
    let (status, reply) = app
        .post_raw(
            "/bulk-actions?accountId=own&entityType=contact&actionType=update",
            "text/csv",
            csv.as_bytes().to_vec(),
        )
        .await?;
    assert_eq!(status, 202, "{reply}");
    let csv_action = reply["actionId"]
        .as_str()
        .context("an action id")?
        .to_owned();
    let view = app.wait_projected_terminal(&csv_action, WAIT).await?;
    assert_eq!(view["succeeded"], 1, "{view}");
    let old = contact(&app, "own", "old@x.io").await?.context("old")?;
    assert_eq!(old.get_i64("seats")?, 40);
    assert!(!old.get_bool("vip")?);
    assert_eq!(
        old.get_array("tags")?,
        &vec![Bson::from("x"), Bson::from("y")]
    );
    assert!(!old.contains_key("tier"), "{old}");

    // What the records were checked against stays with the action.
    let store = infra::EventStore::new(
        infra::redis_conn::shared(app.redis_url()).await?,
        app.keys(),
    );
    let id = domain::ActionId::parse(&upserted).context("an action id")?;
    let created = store.read(id, None, 1).await?;
    let domain::EventPayload::Created { custom_fields, .. } = &created[0].envelope.payload else {
        panic!("the first event is Created");
    };
    assert_eq!(
        serde_json::to_value(custom_fields)?,
        definition,
        "the definition in force"
    );
    Ok(())
}

/// A list edit on a contact whose stored value is not a list fails that record alone
/// (`invalid_type`), at once: the rest of its batch is applied, nothing is retried, and a
/// list sent whole replaces the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_edit_on_a_value_that_is_not_a_list_fails_alone() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let key = format!("Bearer {}", app.key_for("lists").await?);
    let definition = json!({ "fields": [{ "name": "tags", "type": "string[]" }] });
    let put = app
        .send(
            reqwest::Method::PUT,
            "/fields/contact",
            Some(&definition),
            &[("authorization", key.as_str())],
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    app.contacts()
        .insert_many([
            doc! { "accountId": "lists", "email": "text@x.io", "tags": "legacy text" },
            doc! { "accountId": "lists", "email": "list@x.io", "tags": ["a"] },
        ])
        .await?;
    let edit = app
        .submit(&action(
            "lists",
            "update",
            json!([
                { "email": "text@x.io", "tags": { "add": ["vip"] } },
                { "email": "list@x.io", "tags": { "add": ["vip"], "remove": ["a"] } },
            ]),
        ))
        .await?;
    let view = app.wait_projected_terminal(&edit, WAIT).await?;
    assert_eq!(
        codes(&app.all_logs(&edit).await?),
        BTreeMap::from([(0, "invalid_type".into()), (1, "updated".into())]),
        "{view}"
    );
    assert!(view["byReason"].get("dead_lettered").is_none(), "{view}");
    let list = contact(&app, "lists", "list@x.io").await?.context("list")?;
    assert_eq!(list.get_array("tags")?, &vec![Bson::from("vip")]);
    let text = contact(&app, "lists", "text@x.io").await?.context("text")?;
    assert_eq!(text.get_str("tags")?, "legacy text");

    let replace = app
        .submit(&action(
            "lists",
            "update",
            json!([{ "email": "text@x.io", "tags": ["vip"] }]),
        ))
        .await?;
    app.wait_projected_terminal(&replace, WAIT).await?;
    let text = contact(&app, "lists", "text@x.io").await?.context("text")?;
    assert_eq!(text.get_array("tags")?, &vec![Bson::from("vip")]);
    Ok(())
}
