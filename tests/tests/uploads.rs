//! Streamed uploads: NDJSON and CSV bodies, planned as they arrive. A line or row that
//! cannot be read fails its own record; a refused upload leaves nothing behind.

use std::time::Duration;

use anyhow::Result;
use bulk_tests::{AppOptions, TestApp};
use futures::StreamExt;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const NDJSON: &str = "application/x-ndjson";
const CSV: &str = "text/csv";

/// `index -> code` of every log line.
async fn codes(app: &TestApp, action: &str) -> Result<Vec<(u64, String)>> {
    let mut codes: Vec<(u64, String)> = app
        .all_logs(action)
        .await?
        .iter()
        .map(|line| {
            (
                line["index"].as_u64().unwrap_or(u64::MAX),
                line["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    codes.sort();
    Ok(codes)
}

async fn contact(
    app: &TestApp,
    account: &str,
    email: &str,
) -> Result<Option<mongodb::bson::Document>> {
    Ok(app
        .contacts()
        .find_one(mongodb::bson::doc! { "accountId": account, "email": email })
        .await?)
}

/// Every staging key a submission leaves; none once it committed or was refused.
async fn staging_keys(app: &TestApp) -> Result<Vec<String>> {
    let mut conn = infra::redis_conn::shared(&app.services.redis_url).await?;
    Ok(redis::cmd("KEYS")
        .arg("test:*staging*")
        .query_async(&mut conn)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_lines_are_records_and_a_broken_line_fails_alone() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        batch_size: 3,
        max_record_bytes: 200,
        ..AppOptions::default()
    })
    .await?;
    let long_name = "n".repeat(300);
    let body = [
        "\u{feff}{\"email\":\"ann@x.io\",\"name\":\"Ann\",\"age\":41}\r",
        "",
        "{\"email\":\"bob@x.io\",\"name\":\"Bob\"}",
        "{\"email\": \"cid@x.io\", oops}",
        "   ",
        "{\"email\":\" ANN@X.io \",\"name\":\"second Ann\"}",
        "[\"not\",\"an\",\"object\"]",
        &format!("{{\"email\":\"long@x.io\",\"name\":\"{long_name}\"}}"),
        "{\"email\":\"not-an-email\"}",
        "{\"email\":\"dee@x.io\",\"age\":\"old\"}",
        "{\"email\":\"eve@x.io\",\"status\":\"lead\"}",
    ]
    .join("\n");
    let reply = app
        .upload(
            "/bulk-actions?accountId=acme&entityType=contact&actionType=upsert",
            NDJSON,
            body,
            &[],
        )
        .await?;
    assert_eq!(reply.status, 202, "{}", reply.body);
    // The answer already counts what was settled at submission.
    assert_eq!(reply.body["totalRecords"], 9, "{}", reply.body);
    assert_eq!(reply.body["failed"], 5);
    assert_eq!(reply.body["skipped"], 1);
    let action = reply.body["actionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let view = app.wait_projected_terminal(&action, WAIT).await?;
    assert_eq!(
        (
            &view["status"],
            &view["succeeded"],
            &view["failed"],
            &view["skipped"]
        ),
        (&json!("completed"), &json!(3), &json!(5), &json!(1)),
        "{view}"
    );
    let expected: Vec<(u64, String)> = [
        "created",
        "created",
        "malformed_record",
        "duplicate_email",
        "not_an_object",
        "record_too_large",
        "invalid_email",
        "invalid_type",
        "created",
    ]
    .iter()
    .enumerate()
    .map(|(index, code)| (index as u64, (*code).to_owned()))
    .collect();
    assert_eq!(codes(&app, &action).await?, expected);
    let ann = contact(&app, "acme", "ann@x.io")
        .await?
        .expect("ann written");
    assert_eq!(ann.get_str("name")?, "Ann");
    assert!(contact(&app, "acme", "eve@x.io").await?.is_some());
    assert!(contact(&app, "acme", "dee@x.io").await?.is_none());
    assert!(staging_keys(&app).await?.is_empty());

    // Streaming changes nothing about what the records mean: the same records as a JSON
    // body give the same outcome per record, a record past the size limit included.
    let lines: Vec<Value> = vec![
        json!({"email": "ann@x.io", "name": "Ann", "age": 41}),
        json!({"email": "bob@x.io", "name": "Bob"}),
        json!({"email": " ANN@X.io ", "name": "second Ann"}),
        json!(["not", "an", "object"]),
        json!({"email": "long@x.io", "name": long_name}),
        json!({"email": "not-an-email"}),
        json!({"email": "dee@x.io", "age": "old"}),
    ];
    let ndjson: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let streamed = app
        .upload(
            "/bulk-actions?accountId=twin-a&entityType=contact&actionType=upsert",
            NDJSON,
            ndjson,
            &[],
        )
        .await?;
    let posted = app
        .submit(&json!({"accountId": "twin-b", "entityType": "contact", "actionType": "upsert", "data": lines}))
        .await?;
    let streamed = streamed.body["actionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.wait_projected_terminal(&streamed, WAIT).await?;
    app.wait_projected_terminal(&posted, WAIT).await?;
    assert_eq!(codes(&app, &streamed).await?, codes(&app, &posted).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_are_records_under_their_header() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let mut body = b"Email,Name,AGE,status\r\n".to_vec();
    body.extend_from_slice(b"ann@x.io,Ann,41,lead\r\n");
    body.extend_from_slice(b"\"bob@x.io\",\"Bob, \"\"the builder\"\"\nsecond line\",,\r\n");
    body.extend_from_slice(b"cid@x.io,Cid\r\n"); // too few cells
    body.extend_from_slice(b"dee@x.io,Dee,forty,\r\n"); // age is not a number
    body.extend_from_slice(b"eve@x.io,\xff\xfe,30,\r\n"); // not UTF-8
    body.extend_from_slice(b"ANN@x.io,Ann again,,\r\n"); // duplicate
    body.extend_from_slice(b"fay@x.io,,,\r\n"); // nothing to change but the key: fine for upsert
    let reply = app
        .upload(
            "/bulk-actions?accountId=acme&entityType=contact&actionType=upsert",
            CSV,
            body,
            &[],
        )
        .await?;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let action = reply.body["actionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let view = app.wait_projected_terminal(&action, WAIT).await?;
    assert_eq!(view["totalRecords"], 7, "{view}");
    let codes = codes(&app, &action).await?;
    let expected = [
        "created",
        "created",
        "malformed_record",
        "invalid_type",
        "malformed_record",
        "duplicate_email",
        "created",
    ];
    assert_eq!(
        codes
            .iter()
            .map(|(_, code)| code.as_str())
            .collect::<Vec<_>>(),
        expected
    );
    let ann = contact(&app, "acme", "ann@x.io")
        .await?
        .expect("ann written");
    assert_eq!(
        ann.get_i64("age")
            .or_else(|_| ann.get_i32("age").map(i64::from))?,
        41
    );
    assert_eq!(ann.get_str("status")?, "lead");
    let bob = contact(&app, "acme", "bob@x.io")
        .await?
        .expect("bob written");
    assert_eq!(bob.get_str("name")?, "Bob, \"the builder\"\nsecond line");
    let logs = app.all_logs(&action).await?;
    let cid = logs
        .iter()
        .find(|line| line["index"] == 2)
        .cloned()
        .unwrap_or_default();
    assert!(
        cid["message"]
            .as_str()
            .unwrap_or_default()
            .contains("line 4"),
        "{cid}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_gets_its_code_and_leaves_nothing_behind() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        batch_size: 2,
        max_records_per_action: 5,
        max_upload_bytes: 4096,
        ..AppOptions::default()
    })
    .await?;
    let upsert = "/bulk-actions?accountId=acme&entityType=contact&actionType=upsert";
    let six: String = (0..6)
        .map(|i| format!("{{\"email\":\"p{i}@x.io\"}}\n"))
        .collect();
    // Three records, 6,000 bytes: past the byte limit, within the record limit.
    let big = format!(
        "{{\"email\":\"a@x.io\",\"name\":\"{}\"}}\n",
        "n".repeat(1970)
    )
    .repeat(3);
    let cases: Vec<(&str, String, &str, String, u16, &str)> = vec![
        (
            "unknown column",
            upsert.into(),
            CSV,
            "email,phone\na@x.io,1\n".into(),
            400,
            "invalid_csv_header",
        ),
        (
            "no email column",
            upsert.into(),
            CSV,
            "name\nAnn\n".into(),
            400,
            "invalid_csv_header",
        ),
        (
            "empty csv",
            upsert.into(),
            CSV,
            "email\n".into(),
            400,
            "empty_data",
        ),
        (
            "empty ndjson",
            upsert.into(),
            NDJSON,
            "\n\n".into(),
            400,
            "empty_data",
        ),
        (
            "more records than allowed",
            upsert.into(),
            NDJSON,
            six,
            400,
            "too_many_records",
        ),
        (
            "body too large",
            upsert.into(),
            NDJSON,
            big,
            413,
            "payload_too_large",
        ),
        (
            "settings missing",
            "/bulk-actions?accountId=acme&entityType=contact".into(),
            NDJSON,
            "{}\n".into(),
            400,
            "missing_field",
        ),
        (
            "unknown setting",
            format!("{upsert}&batchSize=5"),
            NDJSON,
            "{}\n".into(),
            400,
            "invalid_query",
        ),
        (
            "bad pacing",
            format!("{upsert}&pacingBatchSize=0&pacingIntervalSeconds=5"),
            NDJSON,
            "{}\n".into(),
            400,
            "invalid_pacing",
        ),
        (
            "past schedule",
            format!("{upsert}&scheduledFor=2001-01-01T00:00:00Z"),
            CSV,
            "email\na@x.io\n".into(),
            400,
            "scheduled_for_in_past",
        ),
        (
            "other account",
            "/bulk-actions?accountId=other&entityType=contact&actionType=upsert".into(),
            NDJSON,
            "{}\n".into(),
            403,
            "account_mismatch",
        ),
        (
            "query with json",
            upsert.into(),
            "application/json",
            "{}".into(),
            400,
            "invalid_query",
        ),
        (
            "unsupported type",
            upsert.into(),
            "text/plain",
            "a@x.io".into(),
            415,
            "unsupported_media_type",
        ),
    ];
    let key = app.key_for("acme").await?;
    for (name, path, content_type, body, status, code) in cases {
        // The "other account" case must present acme's key, not one of its own.
        let auth = format!("Bearer {key}");
        let reply = app
            .upload(
                &path,
                content_type,
                body,
                &[("authorization", auth.as_str())],
            )
            .await?;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}: {}",
            reply.body
        );
    }
    assert!(
        staging_keys(&app).await?.is_empty(),
        "{:?}",
        staging_keys(&app).await?
    );
    let (_, list) = app.get_json("/bulk-actions?accountId=acme").await?;
    assert_eq!(list["total"], 0, "{list}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_streamed_upload_is_one_action_and_retries_are_idempotent() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        batch_size: 500,
        ..AppOptions::default()
    })
    .await?;
    // 20,000 records, every tenth email a mixed-case repeat of an earlier one, cut into
    // chunks of 1,000 bytes that split lines anywhere.
    let mut ndjson = String::new();
    for i in 0..20_000u32 {
        let email = if i % 10 == 9 {
            format!("Person{}@Example.com", i - 5)
        } else {
            format!("person{i}@example.com")
        };
        ndjson.push_str(&json!({"email": email, "name": format!("P{i}")}).to_string());
        ndjson.push('\n');
    }
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = ndjson
        .as_bytes()
        .chunks(1000)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let stream = futures::stream::iter(chunks).then(|chunk| async {
        tokio::task::yield_now().await;
        chunk
    });
    let path = "/bulk-actions?accountId=acme&entityType=contact&actionType=upsert";
    let headers = [("idempotency-key", "upload-1")];
    let first = app
        .upload(path, NDJSON, reqwest::Body::wrap_stream(stream), &headers)
        .await?;
    assert_eq!(first.status, 202, "{}", first.body);
    let action = first.body["actionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let view = app.wait_projected_terminal(&action, WAIT).await?;
    assert_eq!(
        (&view["totalRecords"], &view["succeeded"], &view["skipped"]),
        (&json!(20_000), &json!(18_000), &json!(2_000)),
        "{view}"
    );
    let stored = app
        .contacts()
        .count_documents(mongodb::bson::doc! { "accountId": "acme" })
        .await?;
    assert_eq!(stored, 18_000);

    // The same upload again (query in another order): the same action, nothing new.
    let again = app
        .upload(
            "/bulk-actions?actionType=upsert&entityType=contact&accountId=acme",
            NDJSON,
            ndjson.clone(),
            &headers,
        )
        .await?;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["actionId"].as_str(), Some(action.as_str()));
    // The same key with other records is a client bug.
    let other = app
        .upload(path, NDJSON, "{\"email\":\"x@x.io\"}\n", &headers)
        .await?;
    assert_eq!(
        (other.status, other.body["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert!(staging_keys(&app).await?.is_empty());
    Ok(())
}

/// The BSON size of every log bucket of an action.
async fn bucket_sizes(app: &TestApp, action: &str) -> Result<Vec<usize>> {
    let mut sizes = Vec::new();
    for bucket in app.all_docs(infra::mongo::LOG_VIEWS).await? {
        if bucket.get_str("actionId")? == action {
            let mut bytes = Vec::new();
            bucket.to_writer(&mut bytes)?;
            sizes.push(bytes.len());
        }
    }
    Ok(sizes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_with_huge_unknown_keys_fail_with_bounded_messages_in_small_buckets() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        batch_size: 1000,
        ..AppOptions::default()
    })
    .await?;
    // 300 lines just under the 64 KiB record limit, each with a 60 KB unknown key: echoed
    // whole, their messages alone would make an 18 MB log bucket.
    let lines = 300;
    let ndjson: String = (0..lines)
        .map(|i| {
            let key = format!("{i}{}", "k".repeat(60_000));
            format!("{}\n", json!({ "email": format!("u{i}@x.io"), (key): 1 }))
        })
        .collect();
    let reply = app
        .upload(
            "/bulk-actions?accountId=acme&entityType=contact&actionType=upsert",
            NDJSON,
            ndjson,
            &[],
        )
        .await?;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let action = reply.body["actionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let view = app.wait_projected_terminal(&action, WAIT).await?;
    assert_eq!(view["failed"], lines, "{view}");
    let logs = app.all_logs(&action).await?;
    let indexes: Vec<u64> = logs.iter().filter_map(|l| l["index"].as_u64()).collect();
    assert_eq!(indexes, (0..lines).collect::<Vec<u64>>());
    for line in &logs {
        assert_eq!(line["code"], "unknown_field", "{line}");
        let message = line["message"].as_str().unwrap_or_default();
        // The name is quoted as a short prefix, cut where the ellipsis stands.
        assert!(
            message.len() <= domain::text::MESSAGE_MAX_BYTES && message.contains("kkk…"),
            "{message}"
        );
    }
    let sizes = bucket_sizes(&app, &action).await?;
    assert!(!sizes.is_empty());
    assert!(sizes.iter().all(|size| *size < 4 << 20), "{sizes:?}");
    Ok(())
}
