//! The HTTP contract: request-level errors, reading your own writes, list and logs paging,
//! health and the OpenAPI document. Real services, real api.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bulk_tests::error_code as code;
use bulk_tests::{AppOptions, TestApp};
use reqwest::Method;
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

/// Every key but the request budgets (a request the rate limit admitted counts against
/// it whatever its answer, a 400 included) and the API keys the client makes on first use.
async fn redis_keys(app: &TestApp) -> Result<Vec<String>> {
    let mut conn = infra::redis_conn::shared(&app.services.redis_url).await?;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("test:*")
        .query_async(&mut conn)
        .await?;
    keys.retain(|key| !key.contains(":budget:requests:") && !key.contains(":apikey"));
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
    // The list is the caller's account's: "acme" is the client's default account.
    let (status, all) = app.get_json("/bulk-actions").await?;
    assert_eq!(status, 200);
    assert_eq!(
        (
            all["total"].as_u64(),
            all["limit"].as_u64(),
            all["skip"].as_u64()
        ),
        (Some(3), Some(20), Some(0))
    );
    let acme_newest_first = vec![ids[3].clone(), ids[1].clone(), ids[0].clone()];
    assert_eq!(item_ids(&all), acme_newest_first);
    let (_, acme) = app.get_json("/bulk-actions?accountId=acme").await?;
    assert_eq!(item_ids(&acme), acme_newest_first);
    let (_, beta) = app.get_json("/bulk-actions?accountId=beta").await?;
    assert_eq!(item_ids(&beta), vec![ids[4].clone(), ids[2].clone()]);
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
    assert_eq!(completed["total"], 3);
    let (_, queued) = app.get_json("/bulk-actions?status=queued").await?;
    assert_eq!(queued["total"], 0);
    let (_, capped) = app.get_json("/bulk-actions?limit=1000").await?;
    assert_eq!(capped["limit"], 100);

    let acme_key = format!("Bearer {}", app.key_for("acme").await?);
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
        let reply = app
            .send(
                Method::GET,
                &format!("/bulk-actions?{bad}"),
                None,
                &[("authorization", &acme_key)],
            )
            .await?;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{bad}: {}",
            reply.body
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

    // Lines are stored in buckets whose index ranges overlap (the rejected records span the
    // whole action); small filtered pages still come out whole and in index order.
    for (status, expected) in [
        (
            "failed",
            (0..25).filter(|i| i % 5 == 4).collect::<Vec<u64>>(),
        ),
        ("succeeded", (0..25).filter(|i| i % 5 != 4).collect()),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => format!("/bulk-actions/{id}/logs?status={status}&limit=2"),
                Some(c) => format!("/bulk-actions/{id}/logs?status={status}&limit=2&cursor={c}"),
            };
            let (_, page) = app.get_json(&path).await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            assert!(items.len() <= 2 && items.iter().all(|l| l["status"] == status));
            seen.extend(items.iter().map(|l| l["index"].as_u64().unwrap_or(999)));
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, expected, "{status}");
    }

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
    let api_key = app.key_for("acme").await?;
    let post = |body: Value, key: Option<&'static str>| {
        let app = &app;
        let api_key = api_key.clone();
        async move {
            let mut request = app
                .http
                .post(app.url("/bulk-actions"))
                .bearer_auth(api_key)
                .json(&body);
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

/// A reservation lives in the account's partition, so it fails over with the actions it
/// guards; one a build before that made (outside the partitions) still holds after an
/// upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reserved_by_an_older_build_still_holds() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let api_key = app.key_for("acme").await?;
    let post = || {
        app.http
            .post(app.url("/bulk-actions"))
            .bearer_auth(&api_key)
            .header("Idempotency-Key", "k-upgrade")
            .json(&valid())
            .send()
    };
    let first: Value = post().await?.json().await?;
    let mut conn = infra::redis_conn::shared(&app.services.redis_url).await?;
    let reservations: Vec<String> = redis::cmd("KEYS")
        .arg("test:*idem:*")
        .query_async(&mut conn)
        .await?;
    let account = domain::AccountId::parse("acme")?;
    let partition = app.keys().account_partition(&account);
    let [reservation] = reservations.as_slice() else {
        anyhow::bail!("reservations: {reservations:?}");
    };
    let digest = reservation
        .strip_prefix(&format!("test:{{{partition}}}:idem:"))
        .with_context(|| format!("{reservation} is not in the account's partition"))?;

    // As a build before issue 14 left it.
    let legacy = app.keys().legacy_idempotency(digest);
    let _: () = redis::cmd("RENAME")
        .arg(reservation)
        .arg(&legacy)
        .query_async(&mut conn)
        .await?;
    let response = post().await?;
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let again: Value = response.json().await?;
    ensure!(
        replayed && again["actionId"] == first["actionId"],
        "{first} then {again}"
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(reservation)
        .query_async(&mut conn)
        .await?;
    ensure!(!exists, "the old reservation was shadowed by a new one");
    Ok(())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_belongs_to_its_keys_account() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    // Without a key, or with a bad one: 401, with a Bearer challenge.
    for authorization in [
        None,
        Some("Bearer"),
        Some("Basic YWNtZTpwdw=="),
        Some("Bearer bka_nope.nope"),
        Some("Bearer bka_01JDQ6V4J8Q0Y5Z6X7W8V9T0S1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ] {
        let mut request = app.http.get(app.url("/bulk-actions"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), 401, "{authorization:?}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or("")),
            Some("Bearer")
        );
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["code"], "unauthorized");
    }

    // The key is checked before the body is read: announce a 20 MB body, send none, and
    // the answer is an immediate 401 (reading the body first would wait for it forever).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = app.base_url.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        let head = format!(
            "POST /bulk-actions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            20 * 1024 * 1024
        );
        stream.write_all(head.as_bytes()).await?;
        let mut answer = vec![0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .map_err(|_| {
                anyhow::anyhow!("no answer without the body: the body is read before the key")
            })??;
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }

    let acme = bearer(&app.key_for("acme").await?);
    let beta = bearer(&app.key_for("beta").await?);
    let as_beta = [("authorization", beta.as_str())];
    let mut body = valid();
    body["accountId"] = json!("acme");
    let theirs = app.submit(&body).await?;
    // No accountId in the body: the key's account.
    let mut body = valid();
    body.as_object_mut()
        .map(|fields| fields.remove("accountId"));
    let ours = app
        .send(Method::POST, "/bulk-actions", Some(&body), &as_beta)
        .await?;
    assert_eq!(ours.status, 202, "{}", ours.body);
    assert_eq!(ours.body["accountId"], "beta");
    let ours = ours.body["actionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.wait_projected_terminal(&theirs, WAIT).await?;

    // Another account's action is exactly as absent as one that never existed.
    let (_, never) = app
        .get_json("/bulk-actions/01JDQ6V4J8Q0Y5Z6X7W8V9T0S1")
        .await?;
    for (method, path) in [
        (Method::GET, format!("/bulk-actions/{theirs}")),
        (Method::GET, format!("/bulk-actions/{theirs}/stats")),
        (Method::GET, format!("/bulk-actions/{theirs}/logs")),
        (Method::POST, format!("/bulk-actions/{theirs}/cancel")),
        (Method::POST, format!("/bulk-actions/{theirs}/pause")),
        (Method::POST, format!("/bulk-actions/{theirs}/resume")),
        (Method::PATCH, format!("/bulk-actions/{theirs}")),
    ] {
        let reply = app
            .send(
                method.clone(),
                &path,
                Some(&json!({ "maxRecordsPerMinute": 5 })),
                &as_beta,
            )
            .await?;
        assert_eq!(
            (reply.status, &reply.body),
            (404, &never),
            "{method} {path}"
        );
    }
    // Naming another account is 403, and writes nothing.
    let mut body = valid();
    body["accountId"] = json!("acme");
    let refused = app
        .send(Method::POST, "/bulk-actions", Some(&body), &as_beta)
        .await?;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (403, Some("account_mismatch"))
    );
    let listed = app
        .send(Method::GET, "/bulk-actions?accountId=acme", None, &as_beta)
        .await?;
    assert_eq!(listed.status, 403);
    // Lists and logs are the key's account's only.
    let beta_list = app
        .send(Method::GET, "/bulk-actions", None, &as_beta)
        .await?;
    let listed_ids: Vec<&str> = beta_list.body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["actionId"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed_ids, vec![ours.as_str()]);
    let acme_list = app
        .send(
            Method::GET,
            "/bulk-actions",
            None,
            &[("authorization", &acme)],
        )
        .await?;
    assert_eq!(acme_list.body["total"], 1);

    // The key that submitted is in the view and the events.
    let keys = app
        .send(
            Method::GET,
            "/admin/accounts/acme/api-keys",
            None,
            &[("authorization", "Bearer test-admin-token")],
        )
        .await?;
    assert_eq!(keys.status, 200);
    let key_id = keys.body["items"][0]["keyId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        keys.body["items"][0].get("apiKey").is_none(),
        "secrets are never listed"
    );
    let (_, view) = app.get_json(&format!("/bulk-actions/{theirs}")).await?;
    assert_eq!(view["apiKeyId"], json!(key_id));

    // Revocation: a second key works, then is refused; revoking is per account.
    let admin = [("authorization", "Bearer test-admin-token")];
    let made = app
        .send(Method::POST, "/admin/accounts/acme/api-keys", None, &admin)
        .await?;
    assert_eq!(made.status, 201);
    let second = bearer(made.body["apiKey"].as_str().unwrap_or_default());
    let second_id = made.body["keyId"].as_str().unwrap_or_default().to_owned();
    let path = format!("/bulk-actions/{theirs}");
    let with_second = [("authorization", second.as_str())];
    assert_eq!(
        app.send(Method::GET, &path, None, &with_second)
            .await?
            .status,
        200
    );
    let wrong_account = app
        .send(
            Method::DELETE,
            &format!("/admin/accounts/beta/api-keys/{second_id}"),
            None,
            &admin,
        )
        .await?;
    assert_eq!(wrong_account.status, 404);
    let revoked = app
        .send(
            Method::DELETE,
            &format!("/admin/accounts/acme/api-keys/{second_id}"),
            None,
            &admin,
        )
        .await?;
    assert_eq!(revoked.status, 204);
    let after = app.send(Method::GET, &path, None, &with_second).await?;
    assert_eq!(
        (after.status, after.body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let again = app
        .send(
            Method::DELETE,
            &format!("/admin/accounts/acme/api-keys/{second_id}"),
            None,
            &admin,
        )
        .await?;
    assert_eq!(
        (again.status, again.body["error"]["code"].as_str()),
        (404, Some("api_key_not_found"))
    );
    // The first key of the account is untouched.
    assert_eq!(
        app.send(Method::GET, &path, None, &[("authorization", &acme)])
            .await?
            .status,
        200
    );

    // Admin endpoints: no token or a wrong one is 401.
    for authorization in [None, Some("Bearer wrong"), Some(acme.as_str())] {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| vec![("authorization", value)])
            .unwrap_or_default();
        let reply = app
            .send(
                Method::POST,
                "/admin/accounts/acme/api-keys",
                None,
                &headers,
            )
            .await?;
        assert_eq!(reply.status, 401, "{authorization:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_admin_is_off_and_nothing_is_open() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        admin_token: None,
        ..AppOptions::default()
    })
    .await?;
    for path in [
        "/admin/accounts/acme/limits",
        "/admin/accounts/acme/api-keys",
    ] {
        let reply = app
            .send(
                Method::GET,
                path,
                None,
                &[("authorization", "Bearer anything")],
            )
            .await?;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (404, Some("admin_disabled")),
            "{path}"
        );
    }
    let (status, body) = app.post_json("/bulk-actions", &valid()).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    Ok(())
}

/// schemathesis generates requests for every operation in `/openapi.json` (valid and
/// invalid ones) with an account's API key: no answer may be a 5xx, and every answer must
/// be documented (status, content type, body schema). Bounded per operation and seeded, so
/// a run is repeatable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_undocumented_answer() -> Result<()> {
    let bin = std::env::var("SCHEMATHESIS_BIN").map_err(|_| {
        anyhow::anyhow!("SCHEMATHESIS_BIN is not set: run scripts/test.sh, which installs it")
    })?;
    let app = TestApp::spawn(AppOptions {
        // Event streams end, so that each of schemathesis' requests gets a whole answer.
        max_stream_seconds: 1,
        ..AppOptions::default()
    })
    .await?;
    app.submit(&valid()).await?; // something for the reads to find
    let key = app.key_for("acme").await?;
    // The account's api with its key, then the admin api with the admin token.
    for (credential, only) in [
        (key.as_str(), "^/(bulk-actions|webhooks)"),
        (bulk_tests::TEST_ADMIN_TOKEN, "^/admin"),
    ] {
        let started = std::time::Instant::now();
        let output = tokio::process::Command::new(&bin)
            .current_dir(app.services.dir())
            .env("PYTHONPATH", env!("CARGO_MANIFEST_DIR"))
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .args([
                "run",
                &app.url("/openapi.json"),
                "--include-path-regex",
                only,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--max-examples",
                "30",
                "--seed",
                "20261128",
                // One worker: schemathesis' thread workers trip a CPython AST race
                // ("AST constructor recursion depth mismatch") on Python 3.11.
                "--workers",
                "1",
                "--no-color",
                "--request-timeout",
                "30",
                "--header",
                &format!("Authorization: Bearer {credential}"),
            ])
            .output()
            .await?;
        let report = String::from_utf8_lossy(&output.stdout);
        println!(
            "schemathesis on {only} took {:?}:\n{report}",
            started.elapsed()
        );
        assert!(
            output.status.success(),
            "schemathesis found problems in {only}:\n{report}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_clear_4xx_or_a_per_record_code() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    // Whole-request refusals: a stable code, nothing written.
    let deep = format!(
        r#"{{"entityType":"contact","actionType":"upsert","data":[{{"email":"a@x.io","name":{}1{}}}]}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let huge_number =
        r#"{"entityType":"contact","actionType":"upsert","data":[{"email":"a@x.io","age":1e400}]}"#;
    for (name, body, code) in [
        (
            "5,000 levels of nesting",
            deep.into_bytes(),
            "malformed_json",
        ),
        (
            "a number beyond f64",
            huge_number.as_bytes().to_vec(),
            "malformed_json",
        ),
    ] {
        let (status, reply) = app
            .post_raw("/bulk-actions", "application/json", body)
            .await?;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (400, Some(code)),
            "{name}"
        );
    }
    for (path, code) in [
        (
            "/bulk-actions?limit=99999999999999999999999",
            "invalid_query",
        ),
        ("/bulk-actions?skip=-1", "invalid_query"),
        ("/bulk-actions?status[$ne]=x", "invalid_query"),
        (
            "/bulk-actions?status=completed&status=failed",
            "invalid_query",
        ),
        ("/bulk-actions/not-a-ulid", "invalid_action_id"),
        (
            "/bulk-actions/01JDQ6V4J8Q0Y5Z6X7W8V9T0S1%00",
            "invalid_action_id",
        ),
    ] {
        let (status, reply) = app.get_json(path).await?;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (400, Some(code)),
            "{path}: {reply}"
        );
    }

    // Record-level: each hostile record fails with its code; the good ones are applied.
    let long = "x".repeat(1_000_000);
    let data = json!([
        { "email": " Ann@Example.COM ", "name": "Ann" },               // 0: normalised, created
        { "email": "ann@example.com", "name": "Again" },               // 1: duplicate_email
        { "email": "bücher@exämple.de", "name": "IDN" },               // 2: created as is
        { "email": "zero\u{200b}width@x.io" },                         // 3: invalid_email
        { "email": "tab\t@x.io" },                                     // 4: invalid_email
        { "email": format!("{}@x.io", "a".repeat(300)) },              // 5: invalid_email
        { "email": "big@x.io", "name": long },                         // 6: record_too_large
        { "email": "op@x.io", "$inc": { "age": 1 } },                  // 7: forbidden_field_name
        { "email": "dot@x.io", "profile.name": "x" },                  // 8: forbidden_field_name
        { "email": "deep@x.io", "name": { "a": { "$gt": "" } } },      // 9: invalid_type
        { "email": "arr@x.io", "status": ["lead"] },                   // 10: invalid_type
        { "email": { "$ne": null } },                                  // 11: invalid_type
        { "email": "age@x.io", "age": 1e300 },                         // 12: invalid_type
        { "email": "neg@x.io", "age": -1 },                            // 13: invalid_value
        "just a string",                                               // 14: not_an_object
    ]);
    let action = app
        .submit(&json!({ "entityType": "contact", "actionType": "upsert", "data": data }))
        .await?;
    app.wait_projected_terminal(&action, WAIT).await?;
    for cursor in ["%7B%22%24gt%22%3A%22%22%7D", "not-base64!", "%00"] {
        let path = format!("/bulk-actions/{action}/logs?cursor={cursor}");
        let (status, reply) = app.get_json(&path).await?;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{path}: {reply}"
        );
    }
    // A command's or admin request's body is a few fields: a big one is refused whole
    // before it is parsed (parsed, a JSON array takes ~16 times its text).
    let many = json!(vec![0; 200_000]);
    let admin = format!("Bearer {}", bulk_tests::TEST_ADMIN_TOKEN);
    for (method, path, body, headers) in [
        (
            Method::PATCH,
            format!("/bulk-actions/{action}"),
            json!({ "pacing": many }),
            vec![],
        ),
        (
            Method::PUT,
            "/admin/accounts/acme/limits".to_owned(),
            json!({ "requestsPerMinute": many }),
            vec![("authorization", admin.as_str())],
        ),
    ] {
        let reply = app.send(method, &path, Some(&body), &headers).await?;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (413, Some("payload_too_large")),
            "{path}: {}",
            reply.body
        );
    }
    let logs = app.all_logs(&action).await?;
    let codes: Vec<&str> = logs
        .iter()
        .map(|line| line["code"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        codes,
        vec![
            "created",
            "duplicate_email",
            "created",
            "invalid_email",
            "invalid_email",
            "invalid_email",
            "record_too_large",
            "forbidden_field_name",
            "forbidden_field_name",
            "invalid_type",
            "invalid_type",
            "invalid_type",
            "invalid_type",
            "invalid_value",
            "not_an_object",
        ]
    );
    let mut stored: Vec<String> = app
        .all_docs(infra::mongo::CONTACTS)
        .await?
        .iter()
        .filter_map(|doc| doc.get_str("email").ok().map(str::to_owned))
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        vec!["ann@example.com".to_owned(), "bücher@exämple.de".to_owned()]
    );
    Ok(())
}

/// A client that keeps knocking at 50 requests a second on a limit of 60 a minute is let
/// in at the limit's pace: a refused request costs nothing (GCRA as in redis-cell), so
/// hammering never locks a client out, and it never gets more than limit + burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hammering_through_429s_is_let_in_at_the_limits_pace() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let admin = bearer(bulk_tests::TEST_ADMIN_TOKEN);
    let limits = json!({ "requestsPerMinute": 60 });
    let set = app
        .send(
            Method::PUT,
            "/admin/accounts/hammer/limits",
            Some(&limits),
            &[("authorization", admin.as_str())],
        )
        .await?;
    assert_eq!(set.status, 200, "{}", set.body);
    app.key_for("hammer").await?;
    app.key_for("calm").await?;
    // RATE_LIMIT_REQUEST_BURST_SECONDS is 6 in tests: 6 s of 60 a minute at once.
    const BURST: usize = 6;

    let started = std::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut sent = Vec::new();
    for tick in 0..250 {
        ticker.tick().await;
        let accounts: &[&'static str] = if tick % 5 == 0 {
            &["hammer", "calm"]
        } else {
            &["hammer"]
        };
        for &account in accounts {
            let client = app.client.clone();
            let path = format!("/bulk-actions?accountId={account}");
            let at = started.elapsed();
            let reply =
                tokio::spawn(async move { client.send(Method::GET, &path, None, &[]).await });
            sent.push((account, at, reply));
        }
    }
    let mut hammer = Vec::new();
    for (account, at, reply) in sent {
        let reply = reply.await??;
        if account == "calm" {
            assert_eq!(reply.status, 200, "another account is not limited");
            assert_eq!(reply.header("ratelimit-limit"), Some("1000000"));
        } else {
            hammer.push((at, reply));
        }
    }

    let admitted: Vec<Duration> = hammer
        .iter()
        .filter(|(_, reply)| reply.status == 200)
        .map(|(at, _)| *at)
        .collect();
    let span = hammer.last().map(|(at, _)| *at).unwrap_or_default()
        - hammer.first().map(|(at, _)| *at).unwrap_or_default();
    // The burst at once, then one a second (60 a minute) for as long as the client knocks.
    let expected = BURST + span.as_secs() as usize;
    println!(
        "{} requests over {span:?}: {} admitted (GCRA: {expected} ± 1)",
        hammer.len(),
        admitted.len()
    );
    assert!(
        (expected - 1..=expected + 1).contains(&admitted.len()),
        "{} admitted, expected {expected} ± 1 (charging refusals would admit {BURST})",
        admitted.len()
    );
    for pair in admitted[BURST - 1..].windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(500),
            "after the burst, one a second: {admitted:?}"
        );
    }

    let mut burst_remaining: Vec<&str> = hammer
        .iter()
        .filter(|(_, reply)| reply.status == 200)
        .take(BURST)
        .filter_map(|(_, reply)| reply.header("ratelimit-remaining"))
        .collect();
    burst_remaining.sort();
    assert_eq!(burst_remaining, ["0", "1", "2", "3", "4", "5"]);
    for (_, reply) in &hammer {
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"per-minute\";q=60;w=60")
        );
        assert_eq!(reply.header("ratelimit-limit"), Some("60"));
        match reply.status {
            200 => {}
            429 => {
                // The next slot is never more than one emission interval away.
                assert_eq!(
                    reply.header("retry-after"),
                    Some("1"),
                    "{:?}",
                    reply.headers
                );
                assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
                assert!(reply
                    .header("ratelimit")
                    .is_some_and(|value| value.starts_with("\"per-minute\";r=0;t=")));
                assert_eq!(reply.body["error"]["code"], "rate_limited");
                assert_eq!(reply.body["error"]["details"]["limit"], 60);
                assert_eq!(reply.body["error"]["details"]["retryAfterSeconds"], 1);
            }
            other => panic!("unexpected status {other}: {}", reply.body),
        }
    }
    // Waiting as told is enough.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = app.get_json("/bulk-actions?accountId=hammer").await?;
    assert_eq!(status, 200);
    Ok(())
}

/// The longest message a log line may carry (`domain::text::MESSAGE_MAX_BYTES`), in bytes.
const MESSAGE_MAX_BYTES: usize = domain::text::MESSAGE_MAX_BYTES;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_field_name_fails_its_record_and_never_stalls_projection() -> Result<()> {
    // The api's default body limit (64 MiB) lets the 17 MB record in.
    let app = TestApp::spawn(AppOptions {
        max_body_bytes: 64 * 1024 * 1024,
        ..AppOptions::default()
    })
    .await?;
    let huge_name = "k".repeat(17_000_000);
    let mut record = serde_json::Map::new();
    record.insert("email".into(), json!("huge@x.io"));
    record.insert(huge_name, json!(1));
    let huge = app
        .submit(&json!({
            "accountId": "tenant-huge", "entityType": "contact", "actionType": "upsert",
            "data": [Value::Object(record)],
        }))
        .await?;
    // Another account's action right behind it: projected, listed, logged.
    let other = app
        .submit(&json!({
            "accountId": "tenant-other", "entityType": "contact", "actionType": "upsert",
            "data": [{ "email": "o1@x.io", "name": "One" }, { "email": "o2@x.io" }],
        }))
        .await?;
    app.wait_projected_terminal(&other, WAIT).await?;
    let (status, list) = app.get_json("/bulk-actions?accountId=tenant-other").await?;
    assert_eq!(status, 200, "{list}");
    assert!(
        list["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|item| item["actionId"] == other.as_str())),
        "{list}"
    );
    let other_codes: Vec<Value> = app
        .all_logs(&other)
        .await?
        .iter()
        .map(|line| line["code"].clone())
        .collect();
    assert_eq!(other_codes, vec![json!("created"), json!("created")]);

    // The huge record fails on its own (as an unknown field, or as too large if the body
    // parser refuses it first) with a message that quotes a short prefix of the name.
    let view = app.wait_projected_terminal(&huge, WAIT).await?;
    assert_eq!(view["failed"], 1, "{view}");
    let logs = app.all_logs(&huge).await?;
    assert_eq!(logs.len(), 1);
    let code = logs[0]["code"].as_str().unwrap_or_default();
    assert!(
        ["unknown_field", "record_too_large"].contains(&code),
        "{code}"
    );
    let message = logs[0]["message"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty() && message.len() <= MESSAGE_MAX_BYTES,
        "{} bytes",
        message.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_email_forms_fail_alone_with_their_codes() -> Result<()> {
    use futures::TryStreamExt;
    let app = TestApp::spawn(AppOptions::default()).await?;
    // A NUL in one name: that record fails, the 99 others of its batch are applied.
    let data: Vec<Value> = (0..100)
        .map(|i| {
            let name = if i == 42 {
                "Nul\u{0}Name".to_owned()
            } else {
                format!("P{i}")
            };
            json!({ "email": format!("p{i}@x.io"), "name": name })
        })
        .collect();
    let action = app
        .submit(&json!({ "entityType": "contact", "actionType": "upsert", "data": data }))
        .await?;
    let view = app.wait_projected_terminal(&action, WAIT).await?;
    assert_eq!(
        (&view["succeeded"], &view["failed"], &view["byReason"]),
        (&json!(99), &json!(1), &json!({ "invalid_characters": 1 })),
        "{view}"
    );
    let logs = app.all_logs(&action).await?;
    assert_eq!(logs[42]["code"], "invalid_characters", "{}", logs[42]);
    assert_eq!(logs.len(), 100);

    // Emails: canonically equivalent forms are one key; domains must be host names, in
    // any script.
    let data = json!([
        { "email": "jos\u{e9}@caf\u{e9}.fr", "name": "composed" },   // 0: created
        { "email": "jose\u{301}@cafe\u{301}.fr", "name": "decomposed" }, // 1: duplicate
        { "email": "a@exa_mple.com" },                                 // 2: invalid_email
        { "email": "a@-x.com" },                                       // 3: invalid_email
        { "email": "a@x..com" },                                       // 4: invalid_email
        { "email": "bücher@exämple.de" },                              // 5: created
        { "email": "ctl\u{1}@x.io" },                                  // 6: invalid_characters
        { "email": "key@x.io", "na\u{0}me": "x" },                     // 7: invalid_characters
    ]);
    let action = app
        .submit(&json!({ "accountId": "emails", "entityType": "contact", "actionType": "upsert", "data": data }))
        .await?;
    app.wait_projected_terminal(&action, WAIT).await?;
    let codes: Vec<String> = app
        .all_logs(&action)
        .await?
        .iter()
        .map(|line| line["code"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        codes,
        [
            "created",
            "duplicate_email",
            "invalid_email",
            "invalid_email",
            "invalid_email",
            "created",
            "invalid_characters",
            "invalid_characters",
        ]
    );
    let mut stored: Vec<String> = app
        .contacts()
        .find(mongodb::bson::doc! { "accountId": "emails" })
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .iter()
        .filter_map(|doc| doc.get_str("email").ok().map(str::to_owned))
        .collect();
    stored.sort();
    assert_eq!(stored, ["bücher@exämple.de", "jos\u{e9}@caf\u{e9}.fr"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_log_outgrows_a_bucket_is_split_and_paged_in_order() -> Result<()> {
    let records = 5_000u32;
    let app = TestApp::spawn(AppOptions {
        batch_size: records,
        ..AppOptions::default()
    })
    .await?;
    // Valid emails of 251 bytes, none of them a contact: one batch of `not_found` lines
    // whose text (some 1.6 MB) outgrows one bucket (`LOG_BUCKET_MAX_BYTES`).
    let domain = format!(
        "{}.{}.{}.io",
        "d".repeat(63),
        "e".repeat(63),
        "f".repeat(55)
    );
    let data: Vec<Value> = (0..records)
        .map(|i| json!({ "email": format!("{i:05}{}@{domain}", "l".repeat(59)) }))
        .collect();
    let action = app
        .submit(&json!({ "entityType": "contact", "actionType": "delete", "data": data }))
        .await?;
    let view = app.wait_projected_terminal(&action, WAIT).await?;
    assert_eq!(view["byReason"], json!({ "not_found": records }), "{view}");

    let mut parts_per_event = std::collections::BTreeMap::<i64, usize>::new();
    for bucket in app.all_docs(infra::mongo::LOG_VIEWS).await? {
        if bucket.get_str("actionId")? != action {
            continue;
        }
        let text = bucket.get_str("lines")?.len();
        assert!(text <= infra::views::LOG_BUCKET_MAX_BYTES, "{text} bytes");
        *parts_per_event.entry(bucket.get_i64("seq")?).or_default() += 1;
    }
    assert!(
        parts_per_event.values().any(|parts| *parts > 1),
        "{parts_per_event:?}"
    );
    // Paging reads every line once, in order, across the split, with and without a filter.
    let expected: Vec<u64> = (0..u64::from(records)).collect();
    let indexes = |lines: Vec<Value>| -> Vec<u64> {
        lines
            .iter()
            .filter_map(|line| line["index"].as_u64())
            .collect()
    };
    assert_eq!(indexes(app.all_logs(&action).await?), expected);
    let mut failed = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get_json(&format!(
                "/bulk-actions/{action}/logs?status=failed&limit=700{cursor}"
            ))
            .await?;
        assert_eq!(status, 200, "{page}");
        failed.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(indexes(failed), expected);
    Ok(())
}

/// `PUT /fields/{entityType}` defines an account's custom fields, checked whole; `GET`
/// reads them back; each account sees only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_defines_its_custom_fields() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let acme = format!("Bearer {}", app.key_for("acme").await?);
    let other = format!("Bearer {}", app.key_for("other").await?);
    let as_acme = [("authorization", acme.as_str())];
    let definition = json!({ "fields": [
        { "name": "tier", "type": "string", "maxLength": 10, "enum": ["gold", "silver"] },
        { "name": "seats", "type": "integer", "min": 1, "max": 500 },
        { "name": "score", "type": "number" },
        { "name": "vip", "type": "boolean" },
        { "name": "renewsOn", "type": "date" },
        { "name": "tags", "type": "string[]", "maxLength": 32 },
    ]});
    let put = app
        .send(Method::PUT, "/fields/contact", Some(&definition), &as_acme)
        .await?;
    ensure!(put.status == 200, "{} {}", put.status, put.body);
    ensure!(
        put.body["entityType"] == "contact" && put.body["fields"] == definition["fields"],
        "{}",
        put.body
    );
    let got = app
        .send(Method::GET, "/fields/contact", None, &as_acme)
        .await?;
    ensure!(got.status == 200 && got.body == put.body, "{}", got.body);
    let theirs = app
        .send(
            Method::GET,
            "/fields/contact",
            None,
            &[("authorization", other.as_str())],
        )
        .await?;
    ensure!(
        theirs.body["fields"] == json!([]),
        "another account's fields: {}",
        theirs.body
    );

    for (bad, field) in [
        (
            json!({ "fields": [{ "name": "email", "type": "string" }] }),
            "email",
        ),
        (
            json!({ "fields": [{ "name": "a b", "type": "string" }] }),
            "a b",
        ),
        (
            json!({ "fields": [{ "name": "n", "type": "integer", "min": 3, "max": 1 }] }),
            "n",
        ),
        (
            json!({ "fields": [{ "name": "n", "type": "string", "$where": "1" }] }),
            "fields",
        ),
        (json!({ "field": [] }), "fields"),
    ] {
        let refused = app
            .send(Method::PUT, "/fields/contact", Some(&bad), &as_acme)
            .await?;
        ensure!(
            refused.status == 400
                && code(&refused.body) == "invalid_field_definition"
                && refused.body["error"]["details"]["field"] == field,
            "{bad}: {} {}",
            refused.status,
            refused.body
        );
    }
    // A refused definition changes nothing.
    let kept = app
        .send(Method::GET, "/fields/contact", None, &as_acme)
        .await?;
    ensure!(kept.body == put.body, "{}", kept.body);

    let unknown = app
        .send(Method::GET, "/fields/widget", None, &as_acme)
        .await?;
    ensure!(
        unknown.status == 400 && code(&unknown.body) == "unsupported_entity_type",
        "{}",
        unknown.body
    );
    let anonymous = app
        .send(
            Method::GET,
            "/fields/contact",
            None,
            &[("authorization", "Bearer nope")],
        )
        .await?;
    ensure!(anonymous.status == 401, "{}", anonymous.status);
    let huge: Vec<Value> = (0..100)
        .map(|i| json!({ "name": format!("f{i}"), "type": "string", "enum": vec!["x".repeat(60); 20] }))
        .collect();
    let too_big = app
        .send(
            Method::PUT,
            "/fields/contact",
            Some(&json!({ "fields": huge })),
            &as_acme,
        )
        .await?;
    ensure!(too_big.status == 413, "{} {}", too_big.status, too_big.body);
    Ok(())
}
