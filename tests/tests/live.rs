//! Live progress over Server-Sent Events, against a real Redis and FerretDB: resuming
//! with `Last-Event-ID` loses and repeats nothing, the final message is the statistics,
//! and nothing of one account reaches another's streams.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulk_tests::{error_code, AppOptions, SseMessage, TestApp};
use domain::Timestamp;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);
const NDJSON: &str = "application/x-ndjson";

fn at_offset(ms: i64) -> String {
    let now = infra::clock::now().millis();
    Timestamp::from_millis(now + ms)
        .expect("a time near now")
        .to_string()
}

fn contacts_ndjson(prefix: &str, count: usize) -> String {
    let mut body = String::with_capacity(count * 48);
    for i in 0..count {
        body.push_str(&format!(
            "{{\"email\":\"{prefix}{i}@live.test\",\"name\":\"P{i}\"}}\n"
        ));
    }
    body
}

async fn upload(app: &TestApp, account: &str, query: &str, body: String) -> Result<String> {
    let reply = app
        .upload(
            &format!("/bulk-actions?accountId={account}&entityType=contact&{query}"),
            NDJSON,
            body,
            &[],
        )
        .await?;
    if reply.status != 202 {
        bail!("upload: {} {}", reply.status, reply.body);
    }
    Ok(reply.body["actionId"]
        .as_str()
        .context("actionId")?
        .to_owned())
}

/// The counts a message carries: a snapshot's, a progress', or a live status change's.
fn processed(message: &SseMessage) -> Option<u64> {
    let data = message.json().ok()?;
    data["processedRecords"]
        .as_u64()
        .or_else(|| data["processed"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_reconnects_ten_times_sees_every_change_once_and_counts_only_grow(
) -> Result<()> {
    const RECORDS: usize = 200_000;
    let app = TestApp::spawn(AppOptions {
        batch_size: 1000,
        max_records_per_action: RECORDS,
        // Slow enough that ten reconnects happen while it runs.
        records_per_minute: 600_000,
        ..AppOptions::default()
    })
    .await?;
    // Scheduled an hour ahead and brought forward once the stream is open, so that every
    // change of status (rescheduled, released, started, ...) is one the client must be
    // sent, however long the upload takes.
    let action = upload(
        &app,
        "acme",
        &format!("actionType=create&scheduledFor={}", at_offset(3_600_000)),
        contacts_ndjson("r", RECORDS),
    )
    .await?;
    let path = format!("/bulk-actions/{action}/events");

    let mut seen: Vec<SseMessage> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut reconnects = 0;
    let mut paused = false;
    let mut resumed = false;
    let deadline = Instant::now() + WAIT;
    'connections: loop {
        if Instant::now() > deadline {
            bail!("no final message within {WAIT:?}: {seen:?}");
        }
        let mut stream = app.events(&path, "acme", last_id.as_deref()).await?;
        if stream.status == 204 {
            bail!("204 before the final message was seen");
        }
        assert_eq!(stream.status, 200);
        assert_eq!(
            stream
                .headers
                .get("content-type")
                .and_then(|value| value.to_str().ok()),
            Some("text/event-stream")
        );
        // Each connection takes a few messages (more once ten reconnects are done).
        let take = if reconnects < 10 { 2 } else { usize::MAX };
        for _ in 0..take {
            let Some(message) = stream.next(Duration::from_secs(60)).await? else {
                bail!("the stream ended without a final message: {seen:?}");
            };
            last_id = message.id.clone().or(last_id);
            let name = message.event.clone();
            seen.push(message);
            if seen.len() == 1 {
                assert_eq!(seen[0].json()?["status"], "scheduled", "{seen:?}");
                let (status, body) = app
                    .patch_action(&action, &json!({ "scheduledFor": at_offset(300) }))
                    .await?;
                assert_eq!(status, 200, "{body}");
            }
            if matches!(name.as_str(), "completed" | "failed" | "cancelled") {
                // The server ends the stream after the final message.
                assert!(stream.next(Duration::from_secs(10)).await?.is_none());
                break 'connections;
            }
            if name == "started" && !paused {
                let (status, body) = app
                    .post_json(&format!("/bulk-actions/{action}/pause"), &json!({}))
                    .await?;
                assert_eq!(status, 200, "{body}");
                paused = true;
            }
            if name == "paused" && !resumed {
                // Away long enough for this api's watcher of the action to stop (it
                // lingers 15 s): the resume below is read back from the stream, not
                // from the watcher's recent changes.
                drop(stream);
                tokio::time::sleep(Duration::from_secs(17)).await;
                let (status, body) = app
                    .post_json(&format!("/bulk-actions/{action}/resume"), &json!({}))
                    .await?;
                assert_eq!(status, 200, "{body}");
                resumed = true;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                reconnects += 1;
                continue 'connections;
            }
        }
        drop(stream);
        reconnects += 1;
    }
    assert!(
        reconnects >= 10,
        "the action ended after {reconnects} reconnects"
    );

    // Every change of status exactly once, in order.
    let changes: Vec<&str> = seen
        .iter()
        .map(|message| message.event.as_str())
        .filter(|name| !matches!(*name, "snapshot" | "progress"))
        .collect();
    assert_eq!(
        changes,
        [
            "rescheduled",
            "released",
            "started",
            "paused",
            "resumed",
            "completed"
        ],
        "{seen:#?}"
    );
    assert_eq!(seen[0].event, "snapshot");
    assert_eq!(seen.iter().filter(|m| m.event == "snapshot").count(), 1);
    // Ids never go back and no message comes twice; counts only grow.
    let mut previous: Option<(u64, u64)> = None;
    let mut pairs = std::collections::HashSet::new();
    for message in &seen {
        let seq = message.seq().context("every message has an id")?;
        assert!(
            pairs.insert((message.event.clone(), seq)),
            "{} {seq} twice",
            message.event
        );
        if let Some(count) = processed(message) {
            if let Some((last_seq, last_count)) = previous {
                assert!(seq >= last_seq, "ids went back: {seq} after {last_seq}");
                assert!(count >= last_count, "counts went back at {seq}");
            }
            previous = Some((seq, count));
        }
    }
    let progress = seen.iter().filter(|m| m.event == "progress").count();
    assert!(progress >= 5, "only {progress} progress messages");
    // The final message is the statistics.
    let last = seen.last().context("messages")?;
    let (status, stats) = app
        .get_json(&format!("/bulk-actions/{action}/stats"))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(last.json()?, stats);
    assert_eq!(stats["succeeded"], RECORDS as u64);

    // Resuming after the final message: nothing left to say.
    let stream = app.events(&path, "acme", last_id.as_deref()).await?;
    assert_eq!(stream.status, 204);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_action_streams_its_snapshot_and_final_message_then_ends() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let action = upload(&app, "acme", "actionType=upsert", contacts_ndjson("f", 250)).await?;
    app.wait_projected_terminal(&action, WAIT).await?;
    let path = format!("/bulk-actions/{action}/events");

    let mut stream = app.events(&path, "acme", None).await?;
    assert_eq!(stream.status, 200);
    let snapshot = stream.next(WAIT).await?.context("snapshot")?;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.json()?["status"], "completed");
    let last = stream.next(WAIT).await?.context("final")?;
    assert_eq!(last.event, "completed");
    // A finished action's snapshot has no id: a client cut off before the final message
    // resumes from before it and is sent both again.
    assert_eq!(snapshot.id, None);
    assert_eq!(last.seq(), snapshot.json()?["lastSeq"].as_u64());
    assert!(stream.next(Duration::from_secs(10)).await?.is_none());

    // An id the server cannot resume from (from the future, or not a number) gets a
    // fresh snapshot.
    for id in ["999999", "not-an-id"] {
        let mut stream = app.events(&path, "acme", Some(id)).await?;
        assert_eq!(stream.status, 200, "Last-Event-ID {id}");
        let first = stream.next(WAIT).await?.context("first")?;
        assert_eq!(first.event, "snapshot", "Last-Event-ID {id}");
    }
    // `?after=` is a query parameter like any other: checked.
    let (status, body) = app.get_json(&format!("{path}?after=x")).await?;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_query"),
        "{body}"
    );
    let stream = app
        .events(
            &format!("{path}?after={}", last.seq().unwrap_or(0)),
            "acme",
            None,
        )
        .await?;
    assert_eq!(stream.status, 204);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_accounts_action_is_not_found_and_never_reaches_its_streams() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    // An account of acme's partition: both streams share one lobby, so only the account
    // check keeps acme's actions from the other's stream.
    let partitions = AppOptions::default().partitions;
    let acme_partition = domain::AccountId::parse("acme")?.partition(partitions);
    let other = (0..1000)
        .map(|n| format!("neighbour{n}"))
        .find(|name| {
            domain::AccountId::parse(name)
                .is_ok_and(|id| id.partition(partitions) == acme_partition)
        })
        .context("an account in acme's partition")?;
    let other = other.as_str();
    let mut other_stream = app.events("/bulk-actions/events", other, None).await?;
    assert_eq!(other_stream.status, 200);
    let mut acme_stream = app.events("/bulk-actions/events", "acme", None).await?;
    assert_eq!(acme_stream.status, 200);

    let submitted = Instant::now();
    let action = upload(&app, "acme", "actionType=upsert", contacts_ndjson("x", 50)).await?;
    let accepted = submitted.elapsed();
    // The account stream sees the new action within a second of its acceptance.
    let first = acme_stream
        .next(Duration::from_secs(10))
        .await?
        .context("a message")?;
    let noticed = submitted.elapsed() - accepted;
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.json()?["actionId"], action.as_str());
    assert!(
        first.id.as_deref().is_none_or(|id| id.starts_with(&action)),
        "{first:?}"
    );
    assert!(
        noticed < Duration::from_secs(1),
        "the account stream took {noticed:?}"
    );
    let rest = acme_stream.until("completed", WAIT).await?;
    assert!(rest
        .iter()
        .all(|m| m.id.as_deref().is_none_or(|id| id.starts_with(&action))));

    // The other account's stream heard nothing of it, and its own stream of the action
    // is 404 like an action that does not exist.
    let nothing = other_stream.next(Duration::from_secs(2)).await;
    assert!(nothing.is_err(), "{other} was sent {nothing:?}");
    let stream = app
        .events(&format!("/bulk-actions/{action}/events"), other, None)
        .await?;
    assert_eq!(stream.status, 404);
    // Naming acme's action as the place to resume from does not show it either.
    let mut resumed = app
        .events(
            &format!("/bulk-actions/events?after={action}:1"),
            other,
            None,
        )
        .await?;
    assert_eq!(resumed.status, 200);
    let nothing = resumed.next(Duration::from_secs(2)).await;
    assert!(nothing.is_err(), "{other} was sent {nothing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_holds_only_so_many_streams_open_and_filters_by_status() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        max_streams_per_account: 2,
        ..AppOptions::default()
    })
    .await?;
    let scheduled = upload(
        &app,
        "acme",
        &format!("actionType=upsert&scheduledFor={}", at_offset(3_600_000)),
        contacts_ndjson("s", 10),
    )
    .await?;
    let mut running_only = app
        .events(
            "/bulk-actions/events?status=running,completed",
            "acme",
            None,
        )
        .await?;
    assert_eq!(running_only.status, 200);
    let mut everything = app.events("/bulk-actions/events", "acme", None).await?;
    assert_eq!(everything.status, 200);
    let first = everything.next(WAIT).await?.context("snapshot")?;
    assert_eq!(first.json()?["actionId"], scheduled.as_str(), "{first:?}");
    assert_eq!(first.json()?["status"], "scheduled", "{first:?}");

    // A third is refused; another account is not affected.
    let third = app.events("/bulk-actions/events", "acme", None).await?;
    assert_eq!(third.status, 429);
    let other = app.events("/bulk-actions/events", "globex", None).await?;
    assert_eq!(other.status, 200);
    drop(other);

    // The filtered stream skips the scheduled action and sends the one that runs.
    let action = upload(&app, "acme", "actionType=upsert", contacts_ndjson("t", 30)).await?;
    let seen = running_only.until("completed", WAIT).await?;
    let statuses: BTreeMap<String, usize> = seen.iter().fold(BTreeMap::new(), |mut by, m| {
        let status = m
            .json()
            .ok()
            .and_then(|data| data["status"].as_str().map(str::to_owned))
            .unwrap_or_else(|| m.event.clone());
        *by.entry(status).or_default() += 1;
        by
    });
    assert!(
        seen.iter()
            .all(|m| m.id.as_deref().is_none_or(|id| id.starts_with(&action))),
        "{seen:?}"
    );
    assert!(
        statuses
            .keys()
            .all(|status| status == "running" || status == "completed"),
        "{statuses:?}"
    );

    // Closing a stream frees its place.
    drop(everything);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = app.events("/bulk-actions/events", "acme", None).await?;
        if again.status == 200 {
            break;
        }
        if Instant::now() > deadline {
            bail!("a closed stream still counts: {}", again.status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
