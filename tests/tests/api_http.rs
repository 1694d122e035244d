//! The HTTP contract: request-level errors, reading your own writes, list and logs paging,
//! health and the OpenAPI document. Real services, real api.

use std::time::Duration;

use anyhow::Result;
use bulk_tests::{AppOptions, TestApp};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn valid() -> Value {
    json!({ "accountId": "acme", "entityType": "contact", "actionType": "upsert", "data": [{ "email": "a@x.io" }] })
}

fn with(field: &str, value: Value) -> Value {
    let mut body = valid();
    body[field] = value;
    body
}

fn without(field: &str) -> Value {
    let mut body = valid();
    body.as_object_mut().map(|o| o.remove(field));
    body
}

/// Every key but the request budgets: a refused request still counts against its
/// account's rate limit, by design.
async fn redis_keys(app: &TestApp) -> Result<Vec<String>> {
    let mut conn = infra::redis_conn::shared(&app.services.redis_url).await?;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("test:*")
        .query_async(&mut conn)
        .await?;
    keys.retain(|key| !key.contains(":budget:requests:"));
    keys.sort();
    Ok(keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_stable_code_and_write_nothing() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        max_records_per_action: 5,
        max_body_bytes: 4096,
        ..AppOptions::default()
    })
    .await?;
    let keys_before = redis_keys(&app).await?;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "missing accountId",
            without("accountId"),
            400,
            "missing_field",
        ),
        (
            "missing entityType",
            without("entityType"),
            400,
            "missing_field",
        ),
        (
            "missing actionType",
            without("actionType"),
            400,
            "missing_field",
        ),
        ("missing data", without("data"), 400, "missing_field"),
        (
            "numeric accountId",
            with("accountId", json!(7)),
            400,
            "invalid_field",
        ),
        (
            "operator accountId",
            with("accountId", json!({ "$ne": "" })),
            400,
            "invalid_field",
        ),
        (
            "bad accountId",
            with("accountId", json!("a/b")),
            400,
            "invalid_field",
        ),
        (
            "unknown entityType",
            with("entityType", json!("deal")),
            400,
            "unsupported_entity_type",
        ),
        (
            "unknown actionType",
            with("actionType", json!("merge")),
            400,
            "unsupported_action_type",
        ),
        (
            "data not an array",
            with("data", json!({ "email": "a@x.io" })),
            400,
            "invalid_field",
        ),
        ("empty data", with("data", json!([])), 400, "empty_data"),
        (
            "too many records",
            with("data", json!([{}, {}, {}, {}, {}, {}])),
            400,
            "too_many_records",
        ),
        (
            "bad scheduledFor",
            with("scheduledFor", json!("next tuesday")),
            400,
            "invalid_scheduled_for",
        ),
        (
            "numeric scheduledFor",
            with("scheduledFor", json!(1700000000)),
            400,
            "invalid_scheduled_for",
        ),
        (
            "scheduledFor in the past",
            with("scheduledFor", json!("2020-01-01T00:00:00Z")),
            400,
            "scheduled_for_in_past",
        ),
        (
            "scheduledFor beyond the horizon (30 days in tests)",
            with("scheduledFor", json!("2099-01-01T00:00:00+02:00")),
            400,
            "scheduled_for_too_far",
        ),
        (
            "unknown top-level field",
            with("$where", json!("1")),
            400,
            "unknown_field",
        ),
        ("not an object", json!([valid()]), 400, "invalid_body"),
    ];
    for (name, body, status, code) in cases {
        let (got_status, got) = app.post_json("/bulk-actions", &body).await?;
        assert_eq!(
            (got_status, got["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}: {got}"
        );
        assert!(
            got["error"]["message"].is_string() && got["error"]["details"].is_object(),
            "{name}: {got}"
        );
    }
    let raw_cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed json",
            "application/json",
            b"{\"accountId\":".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "invalid utf-8",
            "application/json",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'],
            400,
            "malformed_json",
        ),
        (
            "wrong content type",
            "text/plain",
            serde_json::to_vec(&valid())?,
            415,
            "unsupported_media_type",
        ),
        (
            "too large",
            "application/json",
            vec![b' '; 5000],
            413,
            "payload_too_large",
        ),
    ];
    for (name, content_type, body, status, code) in raw_cases {
        let (got_status, got) = app.post_raw("/bulk-actions", content_type, body).await?;
        assert_eq!(
            (got_status, got["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}: {got}"
        );
    }
    assert_eq!(
        redis_keys(&app).await?,
        keys_before,
        "a refused request writes nothing"
    );
    let (_, list) = app.get_json("/bulk-actions").await?;
    assert_eq!(list["total"], 0);

    let (status, body) = app.get_json("/bulk-actions/not-a-ulid").await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_action_id"))
    );
    let (status, body) = app
        .get_json(&format!("/bulk-actions/{}", ulid::Ulid::new()))
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = app
        .get_json(&format!("/bulk-actions/{}/stats", ulid::Ulid::new()))
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = app.get_json("/nope").await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("route_not_found"))
    );
    let response = app.http.delete(app.url("/bulk-actions")).send().await?;
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response.json::<Value>().await?["error"]["code"],
        "method_not_allowed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_write_before_the_projector_catches_up() -> Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        consumers: 0,
        ..AppOptions::default()
    })
    .await?;
    app.stop_projector().await;
    let (status, accepted) = app.post_json("/bulk-actions", &valid()).await?;
    assert_eq!(status, 202);
    let id = accepted["actionId"].as_str().unwrap_or_default().to_owned();
    let (status, view) = app.get_json(&format!("/bulk-actions/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "queued");
    assert_eq!(view["totalRecords"], 1);
    let (status, stats) = app.get_json(&format!("/bulk-actions/{id}/stats")).await?;
    assert_eq!(
        (status, stats["total"].as_u64(), stats["durationMs"].clone()),
        (200, Some(1), Value::Null)
    );

    app.start_consumer();
    app.start_projector();
    let done = app.wait_projected_terminal(&id, WAIT).await?;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["succeeded"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_pages_and_caps() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let mut ids = Vec::new();
    for (account, action_type) in [
        ("acme", "upsert"),
        ("acme", "delete"),
        ("beta", "upsert"),
        ("acme", "upsert"),
        ("beta", "create"),
    ] {
        let mut body = valid();
        body["accountId"] = json!(account);
        body["actionType"] = json!(action_type);
        ids.push(app.submit(&body).await?);
    }
    for id in &ids {
        app.wait_projected_terminal(id, WAIT).await?;
    }
    let item_ids = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| i["actionId"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, all) = app.get_json("/bulk-actions").await?;
    assert_eq!(status, 200);
    assert_eq!(
        (
            all["total"].as_u64(),
            all["limit"].as_u64(),
            all["skip"].as_u64()
        ),
        (Some(5), Some(20), Some(0))
    );
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(item_ids(&all), newest_first);

    let (_, acme) = app.get_json("/bulk-actions?accountId=acme").await?;
    assert_eq!(acme["total"], 3);
    assert_eq!(
        item_ids(&acme),
        vec![ids[3].clone(), ids[1].clone(), ids[0].clone()]
    );
    let (_, page) = app
        .get_json("/bulk-actions?accountId=acme&limit=1&skip=1")
        .await?;
    assert_eq!(
        (page["total"].as_u64(), item_ids(&page)),
        (Some(3), vec![ids[1].clone()])
    );
    let (_, completed) = app
        .get_json("/bulk-actions?status=completed&entityType=contact")
        .await?;
    assert_eq!(completed["total"], 5);
    let (_, queued) = app.get_json("/bulk-actions?status=queued").await?;
    assert_eq!(queued["total"], 0);
    let (_, capped) = app.get_json("/bulk-actions?limit=1000").await?;
    assert_eq!(capped["limit"], 100);

    for bad in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "skip=-5",
        "status=done",
        "entityType=deal",
        "accountId=a%20b",
        "sort=name",
        "limit=1&limit=2",
        "accountId[$ne]=x",
    ] {
        let (status, body) = app.get_json(&format!("/bulk-actions?{bad}")).await?;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{bad}: {body}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_page_by_cursor_and_filter_by_status() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        batch_size: 7,
        ..AppOptions::default()
    })
    .await?;
    let data: Vec<Value> = (0..25)
        .map(|i| {
            if i % 5 == 4 {
                json!({ "email": format!("bad{i}") })
            } else {
                json!({ "email": format!("u{i}@x.io"), "name": "n" })
            }
        })
        .collect();
    let mut body = valid();
    body["data"] = Value::Array(data);
    let id = app.submit(&body).await?;
    app.wait_projected_terminal(&id, WAIT).await?;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("/bulk-actions/{id}/logs?limit=10"),
            Some(c) => format!("/bulk-actions/{id}/logs?limit=10&cursor={c}"),
        };
        let (status, page) = app.get_json(&path).await?;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(
            page["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|l| l["index"].as_u64().unwrap_or(999)),
        );
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (0..25).collect::<Vec<u64>>());

    let (_, failed) = app
        .get_json(&format!("/bulk-actions/{id}/logs?status=failed"))
        .await?;
    let failed: Vec<&Value> = failed["items"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    assert_eq!(failed.len(), 5);
    assert!(failed
        .iter()
        .all(|l| l["code"] == "invalid_email" && l["status"] == "failed"));
    let (_, succeeded) = app
        .get_json(&format!(
            "/bulk-actions/{id}/logs?status=succeeded&limit=100"
        ))
        .await?;
    assert_eq!(succeeded["items"].as_array().map(Vec::len), Some(20));
    assert_eq!(succeeded["nextCursor"], Value::Null);

    for bad in ["cursor=xyz", "status=weird", "limit=0", "offset=3"] {
        let (status, body) = app
            .get_json(&format!("/bulk-actions/{id}/logs?{bad}"))
            .await?;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{bad}: {body}"
        );
    }
    let (status, _) = app
        .get_json(&format!("/bulk-actions/{}/logs", ulid::Ulid::new()))
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_openapi() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    assert_eq!(
        app.get_json("/healthz").await?,
        (200, json!({ "status": "ok" }))
    );
    assert_eq!(
        app.get_json("/readyz").await?,
        (
            200,
            json!({ "status": "ready", "redis": true, "mongodb": true })
        )
    );
    let (status, doc) = app.get_json("/openapi.json").await?;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/bulk-actions",
        "/bulk-actions/{actionId}",
        "/bulk-actions/{actionId}/stats",
        "/bulk-actions/{actionId}/logs",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    for schema in [
        "ErrorBody",
        "ActionView",
        "ActionStats",
        "SubmitRequest",
        "LogPage",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_the_original_action_even_after_its_start_time() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let in_a_second = domain::Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64
            + 1_000,
    )
    .map(|at| at.to_string())
    .unwrap_or_default();
    let body = with("scheduledFor", json!(in_a_second));
    let post = |body: Value, key: Option<&'static str>| {
        let app = &app;
        async move {
            let mut request = app.http.post(app.url("/bulk-actions")).json(&body);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            let response = request.send().await?;
            let replayed = response.headers().get("idempotent-replayed").is_some();
            let status = response.status().as_u16();
            anyhow::Ok((status, replayed, response.json::<Value>().await?))
        }
    };

    let (status, replayed, first) = post(body.clone(), Some("k-1")).await?;
    assert_eq!(
        (status, replayed, first["status"].as_str()),
        (202, false, Some("scheduled"))
    );
    let (status, replayed, again) = post(body.clone(), Some("k-1")).await?;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(again["actionId"], first["actionId"]);

    // Past the start time and its clock-skew tolerance: a new submission is refused, the
    // resubmission of the original is still answered with it.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let (status, _, refused) = post(body.clone(), None).await?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("scheduled_for_in_past"))
    );
    let (status, replayed, late) = post(body.clone(), Some("k-1")).await?;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(late["actionId"], first["actionId"]);

    let (status, _, reused) = post(valid(), Some("k-1")).await?;
    assert_eq!(
        (status, reused["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let (status, _, bad) = post(valid(), Some("has space")).await?;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_idempotency_key"))
    );
    Ok(())
}
