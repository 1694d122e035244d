//! The data model end to end (issue 15): every entity type of the registry through every
//! action type by its natural key, with custom fields of every type, list edits and
//! clearing; matching by document id and by an account's external id field; documents the
//! platform did not make left as they were except for what a record names; and a replay
//! after the account changed its definition rebuilding the same views.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bulk_tests::{codes, error_code, AppOptions, TestApp};
use domain::EntityType;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn expected(codes: &[&str]) -> BTreeMap<u64, String> {
    codes
        .iter()
        .enumerate()
        .map(|(index, code)| (index as u64, (*code).to_owned()))
        .collect()
}

/// Uploads `csv` as an action of the account `ids` on contacts with the settings in
/// `query`, and returns each record's code once the views have it.
async fn csv_codes(app: &TestApp, query: &str, csv: String) -> Result<BTreeMap<u64, String>> {
    let path = format!("/bulk-actions?accountId=ids&entityType=contact&{query}");
    let (status, reply) = app.post_raw(&path, "text/csv", csv.into_bytes()).await?;
    ensure!(status == 202, "{reply}");
    let id = reply["actionId"].as_str().context("an id")?.to_owned();
    app.wait_projected_terminal(&id, WAIT).await?;
    Ok(codes(&app.all_logs(&id).await?))
}

/// The `i`th key of an entity, of its natural key's kind.
fn key(entity: EntityType, i: u32) -> String {
    match entity {
        EntityType::Contact | EntityType::Lead => format!("k{i}@x.io"),
        EntityType::Company => format!("k{i}.example.com"),
        EntityType::Opportunity | EntityType::Task => format!("K-{i}"),
    }
}

/// A built-in text field of each entity, to see built-ins written beside custom ones.
fn text_field(entity: EntityType) -> &'static str {
    match entity {
        EntityType::Task => "subject",
        _ => "name",
    }
}

fn account_of(entity: EntityType) -> String {
    format!("acct-{}", entity.as_str())
}

struct Subject<'a> {
    app: &'a TestApp,
    entity: EntityType,
    account: String,
    auth: String,
}

impl Subject<'_> {
    fn collection(&self) -> mongodb::Collection<Document> {
        self.app
            .database
            .collection::<Document>(self.entity.spec().collection)
    }

    async fn document(&self, key: &str) -> Result<Option<Document>> {
        let field = self.entity.spec().natural_key;
        Ok(self
            .collection()
            .find_one(doc! { "accountId": &self.account, field: key })
            .await?)
    }

    /// Submits, waits for the views, and returns each record's code by index.
    async fn run(&self, body: Value) -> Result<(String, BTreeMap<u64, String>)> {
        let mut body = body;
        body["entityType"] = json!(self.entity.as_str());
        body["accountId"] = json!(self.account);
        let (status, reply) = self.app.post_json("/bulk-actions", &body).await?;
        ensure!(status == 202, "{status}: {reply}");
        let id = reply["actionId"].as_str().context("an id")?.to_owned();
        self.app.wait_projected_terminal(&id, WAIT).await?;
        let logs = self.app.all_logs(&id).await?;
        Ok((id, codes(&logs)))
    }

    async fn define(&self, definition: &Value) -> Result<()> {
        let path = format!("/fields/{}", self.entity.as_str());
        let put = self
            .app
            .send(
                reqwest::Method::PUT,
                &path,
                Some(definition),
                &[("authorization", self.auth.as_str())],
            )
            .await?;
        ensure!(put.status == 200, "{}", put.body);
        Ok(())
    }
}

fn definition() -> Value {
    json!({ "fields": [
        { "name": "tier", "type": "string", "maxLength": 8, "enum": ["gold", "silver"] },
        { "name": "seats", "type": "integer", "min": 1, "max": 500 },
        { "name": "score", "type": "number", "min": 0, "max": 1 },
        { "name": "vip", "type": "boolean" },
        { "name": "renewsOn", "type": "date" },
        { "name": "tags", "type": "string[]", "maxLength": 16 },
        { "name": "sfId", "type": "string", "unique": true },
    ]})
}

fn texts(document: &Document, field: &str) -> Result<BTreeSet<String>> {
    Ok(document
        .get_array(field)?
        .iter()
        .filter_map(Bson::as_str)
        .map(str::to_owned)
        .collect())
}

/// Each entity type, each action type, by its natural key: dedup by that key with the
/// key's own code, a custom field of every type and its limits, list add and remove,
/// clearing, a document the platform did not make updated in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entity_type_takes_every_action_by_its_natural_key() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    for entity in EntityType::ALL {
        let account = account_of(entity);
        let subject = Subject {
            app: &app,
            entity,
            auth: format!("Bearer {}", app.key_for(&account).await?),
            account,
        };
        subject.define(&definition()).await?;
        let spec = entity.spec();
        let (natural, text) = (spec.natural_key, text_field(entity));
        let k = |i| key(entity, i);
        let seed_id = ObjectId::new();
        subject
            .collection()
            .insert_one(doc! {
                "_id": seed_id, "accountId": &subject.account, natural: k(0), text: "Old",
                "tags": ["trial", "beta"], "crm": { "owner": "kim" }, "legacy": [1, 2],
            })
            .await?;
        let (duplicate, missing) = match entity {
            EntityType::Contact | EntityType::Lead => ("duplicate_email", "missing_email"),
            EntityType::Company => ("duplicate_domain", "missing_key"),
            _ => ("duplicate_external_id", "missing_key"),
        };

        let (created_id, created) = subject
            .run(json!({ "actionType": "create", "data": [
                { natural: k(1), text: "One", "tier": "gold", "seats": 3, "score": 0.5,
                  "vip": true, "renewsOn": "2027-01-31", "tags": ["a", "b", "a"] },
                { natural: k(1), text: "again" },
                { natural: k(0), text: "exists" },
                { natural: k(2), "seats": 0 },
                { natural: k(3), "tier": "bronze" },
                { natural: k(4), "tags": ["x".repeat(17)] },
                { natural: k(5), "nickname": "n" },
                { text: "no key" },
                { natural: k(7), "sfId": "S-7" },
            ]}))
            .await?;
        assert_eq!(
            created,
            expected(&[
                "created",
                duplicate,
                "already_exists",
                "invalid_value",
                "invalid_value",
                "invalid_value",
                "unknown_field",
                missing,
                "immutable_field",
            ]),
            "{entity:?}"
        );
        let lines = app.all_logs(&created_id).await?;
        assert_eq!(lines[0]["email"], json!(k(1)), "the log names the key");
        let one = subject.document(&k(1)).await?.context("created")?;
        assert_eq!(one.get_str(text)?, "One");
        assert_eq!(one.get_str("tier")?, "gold");
        assert_eq!(one.get_i64("seats")?, 3);
        assert_eq!(one.get_f64("score")?, 0.5);
        assert!(one.get_bool("vip")?);
        assert_eq!(
            one.get_datetime("renewsOn")?.timestamp_millis(),
            1_801_353_600_000,
            "2027-01-31 as a date"
        );
        assert_eq!(
            texts(&one, "tags")?,
            BTreeSet::from(["a".into(), "b".into()])
        );

        let (_, upserted) = subject
            .run(json!({ "actionType": "upsert", "data": [
                { natural: k(0), text: "Zero", "tags": { "add": ["vip"], "remove": ["trial"] } },
                { natural: k(6), text: "Six", "tags": { "add": ["new"], "remove": ["x"] } },
            ]}))
            .await?;
        assert_eq!(upserted, expected(&["updated", "created"]), "{entity:?}");
        let seeded = subject.document(&k(0)).await?.context("seeded")?;
        assert_eq!(seeded.get_object_id("_id")?, seed_id);
        assert_eq!(seeded.get_str(text)?, "Zero");
        assert_eq!(
            texts(&seeded, "tags")?,
            BTreeSet::from(["beta".into(), "vip".into()])
        );
        assert_eq!(seeded.get_document("crm")?, &doc! { "owner": "kim" });
        assert_eq!(
            seeded.get_array("legacy")?,
            &vec![Bson::Int32(1), Bson::Int32(2)]
        );
        assert!(!seeded.contains_key("createdByBulkAction"), "{seeded}");
        let six = subject.document(&k(6)).await?.context("six")?;
        assert_eq!(texts(&six, "tags")?, BTreeSet::from(["new".into()]));

        let (_, updated) = subject
            .run(json!({ "actionType": "update", "data": [
                { natural: k(1), "tier": null, "seats": 4, text: null },
                { natural: k(99), "seats": 4 },
            ]}))
            .await?;
        assert_eq!(updated, expected(&["updated", "not_found"]), "{entity:?}");
        let one = subject.document(&k(1)).await?.context("one")?;
        assert!(
            !one.contains_key("tier") && !one.contains_key(text),
            "{one}"
        );
        assert_eq!(one.get_i64("seats")?, 4);
        assert!(one.get_bool("vip")?, "unnamed fields stay");

        let (_, deleted) = subject
            .run(json!({ "actionType": "delete", "data": [
                { natural: k(6) }, { natural: k(98) },
            ]}))
            .await?;
        assert_eq!(deleted, expected(&["deleted", "not_found"]), "{entity:?}");
        assert!(subject.document(&k(6)).await?.is_none());
        assert_eq!(
            subject
                .collection()
                .count_documents(doc! { "accountId": &subject.account })
                .await?,
            2,
            "{entity:?}: the seeded document and the created one"
        );
        assert_eq!(
            subject
                .collection()
                .count_documents(doc! { "deletingByBulkAction": { "$exists": true } })
                .await?,
            0,
            "{entity:?}: a delete's marks go with what it deletes"
        );

        // By document id: the seeded document, in place.
        let (_, by_id) = subject
            .run(json!({ "actionType": "update", "matchBy": "id", "data": [
                { "id": seed_id.to_hex(), text: "By id", "seats": 9 },
                { "id": ObjectId::new().to_hex(), text: "nobody" },
            ]}))
            .await?;
        assert_eq!(by_id, expected(&["updated", "not_found"]), "{entity:?}");
        let seeded = subject.document(&k(0)).await?.context("seeded")?;
        assert_eq!(seeded.get_str(text)?, "By id");
        assert_eq!(seeded.get_document("crm")?, &doc! { "owner": "kim" });

        // By an external id: created with the natural key, then updated by it, then deleted.
        let (_, by_sf) = subject
            .run(
                json!({ "actionType": "upsert", "matchBy": "externalId:sfId", "data": [
                    { "sfId": "S-1", natural: k(10), text: "Ten" },
                    { "sfId": "S-1", natural: k(11) },
                ]}),
            )
            .await?;
        assert_eq!(
            by_sf,
            expected(&["created", "duplicate_external_id"]),
            "{entity:?}"
        );
        let (_, again) = subject
            .run(
                json!({ "actionType": "upsert", "matchBy": "externalId:sfId", "data": [
                    { "sfId": "S-1", natural: k(10), text: "Ten again" },
                ]}),
            )
            .await?;
        assert_eq!(again, expected(&["updated"]), "{entity:?}");
        let ten = subject.document(&k(10)).await?.context("ten")?;
        assert_eq!(ten.get_str(text)?, "Ten again");
        assert_eq!(ten.get_str("sfId")?, "S-1");
        let (_, gone) = subject
            .run(
                json!({ "actionType": "delete", "matchBy": "externalId:sfId", "data": [
                    { "sfId": "S-1" }, { "sfId": "S-404" },
                ]}),
            )
            .await?;
        assert_eq!(gone, expected(&["deleted", "not_found"]), "{entity:?}");
        assert!(subject.document(&k(10)).await?.is_none());
    }
    // Each entity kept to its own collection.
    let contacts = app.database.collection::<Document>("contacts");
    assert_eq!(
        contacts
            .count_documents(doc! { "accountId": { "$ne": "acct-contact" } })
            .await?,
        0
    );
    Ok(())
}

/// `matchBy: id` updates and deletes documents by `_id` (ObjectId or text), changing only
/// the fields a record names; `matchBy: externalId:<field>` upserts by an account's unique
/// field, creating with the natural key and never changing it, and the field gets its
/// unique index. Both work from CSV, with the key as a column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_by_id_and_by_an_external_id() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let subject = Subject {
        app: &app,
        entity: EntityType::Contact,
        auth: format!("Bearer {}", app.key_for("ids").await?),
        account: "ids".into(),
    };
    subject.define(&definition()).await?;
    let (a, b) = (ObjectId::new(), ObjectId::new());
    let seeded = [
        doc! { "_id": a, "accountId": "ids", "email": "a@x.io", "name": "A", "nested": { "x": [1, { "y": null }] }, "score": 1_i32 },
        doc! { "_id": b, "accountId": "ids", "email": "b@x.io", "name": "B" },
        doc! { "_id": "c-3", "accountId": "ids", "email": "c@x.io", "name": "C", "owner": "kim" },
        doc! { "_id": ObjectId::new(), "accountId": "other", "email": "z@x.io", "name": "Z" },
    ];
    subject.collection().insert_many(seeded.clone()).await?;

    let (_, by_id) = subject
        .run(json!({ "actionType": "update", "matchBy": "id", "data": [
            { "id": a.to_hex().to_uppercase(), "name": "A2", "tier": "gold" },
            { "id": "c-3", "name": "C2" },
            { "id": a.to_hex(), "name": "again" },
            { "id": ObjectId::new().to_hex(), "name": "nobody" },
            { "id": b.to_hex(), "email": "new@x.io", "name": "B2" },
            { "email": "a@x.io", "name": "no id" },
            { "id": seeded[3].get_object_id("_id")?.to_hex(), "name": "another account's" },
        ]}))
        .await?;
    assert_eq!(
        by_id,
        expected(&[
            "updated",
            "updated",
            "duplicate_id",
            "not_found",
            "immutable_field",
            "missing_key",
            "not_found",
        ])
    );
    let after_a = subject.document("a@x.io").await?.context("a")?;
    let mut expected_a = seeded[0].clone();
    expected_a.insert("name", "A2");
    expected_a.insert("tier", "gold");
    expected_a.insert(
        "updatedAt",
        after_a.get("updatedAt").cloned().context("updatedAt")?,
    );
    assert_eq!(after_a, expected_a, "only the named fields changed");
    let after_c = subject.document("c@x.io").await?.context("c")?;
    assert_eq!(after_c.get_str("_id")?, "c-3");
    assert_eq!(after_c.get_str("name")?, "C2");
    assert_eq!(after_c.get_str("owner")?, "kim");
    let other = app
        .database
        .collection::<Document>("contacts")
        .find_one(doc! { "accountId": "other" })
        .await?
        .context("other")?;
    assert_eq!(
        other.get_str("name")?,
        "Z",
        "another account's document is out of reach"
    );

    // An id cannot create; an external id must be defined unique.
    for (action_type, match_by) in [
        ("upsert", "id"),
        ("create", "id"),
        ("create", "externalId:sfId"),
        ("update", "externalId:tier"),
        ("update", "externalId:nope"),
        ("update", "domain"),
    ] {
        let (status, reply) = app
            .post_json(
                "/bulk-actions",
                &json!({ "accountId": "ids", "entityType": "contact", "actionType": action_type,
                         "matchBy": match_by, "data": [{ "id": "x", "sfId": "x" }] }),
            )
            .await?;
        assert_eq!(status, 400, "{action_type} by {match_by}: {reply}");
        assert_eq!(error_code(&reply), "invalid_match_by", "{reply}");
    }

    subject
        .collection()
        .insert_one(doc! { "accountId": "ids", "email": "taken@x.io", "name": "T" })
        .await?;
    let (upsert_id, upserted) = subject
        .run(
            json!({ "actionType": "upsert", "matchBy": "externalId:sfId", "data": [
                { "sfId": "001", "email": "N1@x.io", "name": "N1", "tags": ["a"] },
                { "sfId": "002", "email": "taken@x.io", "name": "not me" },
                { "sfId": "003", "name": "no email" },
                { "sfId": "001", "email": "dup@x.io" },
            ]}),
        )
        .await?;
    assert_eq!(
        upserted,
        expected(&[
            "created",
            "already_exists",
            "missing_email",
            "duplicate_external_id"
        ])
    );
    let view = app.view(&upsert_id).await?;
    assert_eq!(view["matchBy"], "externalId:sfId", "{view}");
    let n1 = subject.document("n1@x.io").await?.context("n1")?;
    assert_eq!(n1.get_str("sfId")?, "001");
    assert_eq!(
        n1.get_str("_externalId1")?,
        "001",
        "kept in the field's slot"
    );
    let taken = subject.document("taken@x.io").await?.context("taken")?;
    assert_eq!(taken.get_str("name")?, "T");
    assert!(!taken.contains_key("sfId"));
    let indexes = subject.collection().list_index_names().await?;
    assert!(
        indexes.contains(&"accountId__externalId1_unique".to_owned()),
        "the slot's index, made before its first write: {indexes:?}"
    );
    assert!(
        !indexes.iter().any(|name| name.contains("sfId")),
        "an account's own field name is never indexed: {indexes:?}"
    );

    // Another account's field of the same name is its own business: not unique there.
    let other = Subject {
        app: &app,
        entity: EntityType::Contact,
        auth: format!("Bearer {}", app.key_for("plain").await?),
        account: "plain".into(),
    };
    other
        .define(&json!({ "fields": [{ "name": "sfId", "type": "string" }] }))
        .await?;
    let (_, plain) = other
        .run(json!({ "actionType": "create", "data": [
            { "email": "p1@x.io", "sfId": "001" }, { "email": "p2@x.io", "sfId": "001" },
        ]}))
        .await?;
    assert_eq!(plain, expected(&["created", "created"]));

    // Slots are for good: a fourth unique name is refused, a former one keeps its slot.
    for (fields, status) in [
        (
            json!([{ "name": "a1", "type": "string", "unique": true },
                { "name": "a2", "type": "string", "unique": true }]),
            200,
        ),
        (
            json!([{ "name": "a3", "type": "string", "unique": true }]),
            400,
        ),
        (
            json!([{ "name": "sfId", "type": "string", "unique": true },
                { "name": "a2", "type": "string", "unique": true }]),
            200,
        ),
    ] {
        let put = app
            .send(
                reqwest::Method::PUT,
                "/fields/contact",
                Some(&json!({ "fields": fields })),
                &[("authorization", subject.auth.as_str())],
            )
            .await?;
        assert_eq!(put.status, status, "{}", put.body);
        if status == 200 {
            let slots: Vec<(String, u64)> = put.body["fields"]
                .as_array()
                .context("fields")?
                .iter()
                .map(|f| {
                    (
                        f["name"].as_str().unwrap_or("").to_owned(),
                        f["slot"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            for (name, slot) in slots {
                let expected_slot = match name.as_str() {
                    "sfId" => 1,
                    "a1" => 2,
                    _ => 3,
                };
                assert_eq!(slot, expected_slot, "{name}: {}", put.body);
            }
        }
    }
    subject.define(&definition()).await?;

    // Again by the same id: an update, and the natural key is not changed by it.
    let (_, again) = subject
        .run(
            json!({ "actionType": "upsert", "matchBy": "externalId:sfId", "data": [
                { "sfId": "001", "email": "else@x.io", "name": "N1b", "tags": { "add": ["b"] } },
            ]}),
        )
        .await?;
    assert_eq!(again, expected(&["updated"]));
    let n1 = subject.document("n1@x.io").await?.context("n1 again")?;
    assert_eq!(n1.get_str("name")?, "N1b");
    assert_eq!(
        texts(&n1, "tags")?,
        BTreeSet::from(["a".into(), "b".into()])
    );
    assert!(subject.document("else@x.io").await?.is_none());

    // CSV: the key is a column.
    let csv = "sfId,Name\n001,From CSV\n404,Nobody\n".to_owned();
    assert_eq!(
        csv_codes(&app, "actionType=update&matchBy=externalId:sfId", csv).await?,
        expected(&["updated", "not_found"])
    );
    let n1 = subject.document("n1@x.io").await?.context("n1 csv")?;
    assert_eq!(n1.get_str("name")?, "From CSV");
    let csv = format!("id,name\n{},By id\n", b.to_hex());
    assert_eq!(
        csv_codes(&app, "actionType=delete&matchBy=id", csv).await?,
        expected(&["deleted"])
    );
    assert!(subject.document("b@x.io").await?.is_none());
    let (status, reply) = app
        .post_raw(
            "/bulk-actions?accountId=ids&entityType=contact&actionType=delete&matchBy=id",
            "text/csv",
            b"email\na@x.io\n".to_vec(),
        )
        .await?;
    assert_eq!(status, 400, "a CSV without the key column: {reply}");
    assert_eq!(error_code(&reply), "invalid_csv_header");
    Ok(())
}

/// Views rebuilt by a replay after the account changed (and emptied) its definition are
/// the views it had: each action keeps the definition it was checked against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_the_definition_changed_rebuilds_the_same_views() -> Result<()> {
    let mut app = TestApp::spawn(AppOptions::default()).await?;
    let subject = Subject {
        app: &app,
        entity: EntityType::Company,
        auth: format!("Bearer {}", app.key_for("replay").await?),
        account: "replay".into(),
    };
    subject.define(&definition()).await?;
    let (_, codes) = subject
        .run(json!({ "actionType": "upsert", "data": [
            { "domain": "a.io", "tier": "gold", "seats": 3, "tags": ["x"] },
            { "domain": "b.io", "tier": "bronze" },
            { "domain": "A.io", "name": "dup" },
            { "domain": "c.io", "employees": -1 },
        ]}))
        .await?;
    assert_eq!(
        codes,
        expected(&[
            "created",
            "invalid_value",
            "duplicate_domain",
            "invalid_value"
        ])
    );
    subject
        .define(&json!({ "fields": [{ "name": "tier", "type": "integer" }] }))
        .await?;
    subject.define(&json!({ "fields": [] })).await?;
    let before = (
        app.all_docs(infra::mongo::ACTION_VIEWS).await?,
        app.all_docs(infra::mongo::LOG_VIEWS).await?,
    );
    app.stop_projector().await;
    app.replay().await?;
    assert_eq!(before.0, app.all_docs(infra::mongo::ACTION_VIEWS).await?);
    assert_eq!(before.1, app.all_docs(infra::mongo::LOG_VIEWS).await?);
    Ok(())
}
