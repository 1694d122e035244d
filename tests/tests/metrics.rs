//! Prometheus metrics of the real binaries (issue 17): every process of a deployment gets a
//! `METRICS_PORT`; the test scrapes the api, the consumer and the projector while an action
//! runs, checks that the counters move as its records are applied and add up once it is
//! done, that no label holds an action or account id, and runs Prometheus' own
//! `promtool check metrics` (Debian package `prometheus`, installed by scripts/test.sh; its
//! path in `PROMTOOL`, else on `PATH`) on every scrape.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bulk_tests::{Deployment, DeploymentOptions, TEST_ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const RECORDS: usize = 1_200;
const BATCH_SIZE: u32 = 100;
const ACCOUNT: &str = "metrics-acme";
const LIMITED: &str = "metrics-limited";

/// One scrape's samples.
struct Scrape {
    text: String,
}

impl Scrape {
    /// The sum of the samples of `name` whose labels include every `(label, value)`; 0
    /// when there are none (a counter is absent until first incremented).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(sample)
            .filter(|(sample_name, sample_labels, _)| {
                *sample_name == name
                    && labels
                        .iter()
                        .all(|(key, value)| sample_labels.contains(&format!("{key}=\"{value}\"")))
            })
            .map(|(_, _, value)| value)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.text
            .lines()
            .filter_map(sample)
            .any(|(sample_name, _, _)| sample_name == name)
    }
}

/// `name{labels} value` → (name, labels, value). Route templates hold braces, so the
/// labels run to the last `}` before the value.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value = value.parse().ok()?;
    match series.split_once('{') {
        Some((name, rest)) => Some((name, rest.strip_suffix('}')?, value)),
        None => Some((series, "", value)),
    }
}

fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned())
}

/// Scrapes `url` and fails unless `promtool check metrics` passes on what it answered.
async fn scrape(http: &reqwest::Client, url: &str) -> Result<Scrape> {
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(response.status() == 200, "GET {url}: {}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        content_type.starts_with("text/plain"),
        "{url}: {content_type}"
    );
    let text = response.text().await?;
    let checked = text.clone();
    let output = tokio::task::spawn_blocking(move || -> Result<std::process::Output> {
        let mut child = Command::new(promtool())
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running promtool (scripts/deps.sh installs it; or set PROMTOOL)")?;
        child
            .stdin
            .take()
            .context("promtool's stdin")?
            .write_all(checked.as_bytes())?;
        Ok(child.wait_with_output()?)
    })
    .await??;
    if !output.status.success() {
        bail!(
            "promtool check metrics failed on {url}: {}{}\n--- scrape ---\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(Scrape { text })
}

struct Urls {
    api: String,
    consumer: String,
    projector: String,
}

async fn scrape_all(http: &reqwest::Client, urls: &Urls) -> Result<(Scrape, Scrape, Scrape)> {
    Ok((
        scrape(http, &urls.api).await?,
        scrape(http, &urls.consumer).await?,
        scrape(http, &urls.projector).await?,
    ))
}

fn created(consumer: &Scrape) -> f64 {
    consumer.sum(
        "bulk_records_applied_total",
        &[("action_type", "upsert"), ("code", "created")],
    )
}

/// A receiver of webhooks on 127.0.0.1 that answers 200 to anything.
async fn receiver() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

async fn call(
    deployment: &Deployment,
    method: Method,
    path: &str,
    body: Option<&Value>,
    bearer: &str,
) -> Result<u16> {
    let auth = format!("Bearer {bearer}");
    let reply = deployment
        .send(method, path, body, &[("authorization", auth.as_str())])
        .await?;
    Ok(reply.status)
}

/// The api, a consumer and the projector each serve Prometheus text that promtool accepts;
/// the consumer's record counters move while the action runs and end equal to its records;
/// requests are counted by route template, refusals by code; a webhook attempt and an open
/// event stream show; no label carries an id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_metrics_that_move_with_the_records_and_pass_promtool() -> Result<()> {
    let options = DeploymentOptions {
        batch_size: BATCH_SIZE,
        consumer_concurrency: 1,
        // 150 records a second: the action runs for about 8 s, long enough to be seen
        // running.
        records_per_minute: 9_000,
        metrics: true,
        env: vec![
            ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true".to_owned()),
            ("WEBHOOK_POLL_MS", "50".to_owned()),
        ],
        ..DeploymentOptions::default()
    };
    let deployment = Deployment::start(options, &["c1"]).await?;
    let urls = Urls {
        api: deployment.metrics_url("api").context("api metrics")?,
        consumer: deployment
            .metrics_url("consumer c1")
            .context("consumer metrics")?,
        projector: deployment
            .metrics_url("projector")
            .context("projector metrics")?,
    };
    let http = reqwest::Client::new();
    let started = Instant::now();

    // Nothing applied yet; every scrape is valid already.
    let (_, consumer, _) = scrape_all(&http, &urls).await?;
    ensure!(created(&consumer) == 0.0, "{}", consumer.text);

    // A webhook endpoint, so the action's lifecycle events are delivered.
    let key = deployment.key_for(ACCOUNT).await?;
    let hook = receiver().await?;
    let status = call(
        &deployment,
        Method::POST,
        "/webhooks",
        Some(&json!({ "url": hook, "events": ["action.started", "action.completed"] })),
        &key,
    )
    .await?;
    ensure!(status == 201, "registering the webhook: {status}");

    let data: Vec<Value> = (0..RECORDS)
        .map(|i| json!({ "email": format!("m{i}@metrics.example"), "name": format!("M {i}") }))
        .collect();
    let action = deployment
        .submit(&json!({
            "accountId": ACCOUNT, "entityType": "contact", "actionType": "upsert", "data": data,
        }))
        .await?;
    let mut stream = deployment
        .events(&format!("/bulk-actions/{action}/events"), ACCOUNT, None)
        .await?;
    ensure!(stream.status == 200, "event stream: {}", stream.status);

    // Mid-action: some records applied, not all, and the count grows between scrapes.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (api, consumer, _) = scrape_all(&http, &urls).await?;
        let applied = created(&consumer);
        if applied > 0.0 && applied < RECORDS as f64 {
            seen.push(applied);
            ensure!(
                api.sum("bulk_sse_subscribers", &[]) >= 1.0,
                "an open event stream is not counted:\n{}",
                api.text
            );
        }
        if seen.len() >= 2 && seen[seen.len() - 1] > seen[0] {
            break;
        }
        if applied >= RECORDS as f64 || Instant::now() > deadline {
            bail!("never saw the records counter move mid-action (seen {seen:?}, now {applied})");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    deployment
        .wait_projected_terminal(&action, Duration::from_secs(40))
        .await?;
    drop(stream.next(Duration::from_millis(10)).await);
    drop(stream);

    // A refusal of the request budget: one request a minute for another account.
    let limits = format!("/admin/accounts/{LIMITED}/limits");
    let status = call(
        &deployment,
        Method::PUT,
        &limits,
        Some(&json!({ "requestsPerMinute": 1 })),
        TEST_ADMIN_TOKEN,
    )
    .await?;
    ensure!(status == 200, "setting limits: {status}");
    let limited_key = deployment.key_for(LIMITED).await?;
    let mut refused = false;
    for _ in 0..10 {
        let status = call(
            &deployment,
            Method::GET,
            "/bulk-actions",
            None,
            &limited_key,
        )
        .await?;
        if status == 429 {
            refused = true;
            break;
        }
    }
    ensure!(refused, "the limited account was never refused");

    // The counters add up once the action is done (the consumer settles, then the views
    // follow; the backlog gauges are sampled every 5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (api, consumer, projector) = loop {
        let (api, consumer, projector) = scrape_all(&http, &urls).await?;
        let settled = created(&consumer) == RECORDS as f64
            && consumer.sum("bulk_webhook_attempts_total", &[("result", "succeeded")]) >= 2.0
            && consumer.has("bulk_work_pending_batches")
            && projector.has("bulk_projector_lag_seconds");
        if settled {
            break (api, consumer, projector);
        }
        if Instant::now() > deadline {
            bail!(
                "the counters did not add up:\n--- consumer ---\n{}\n--- projector ---\n{}",
                consumer.text,
                projector.text
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let batches = (RECORDS as u32).div_ceil(BATCH_SIZE) as f64;
    ensure!(
        consumer.sum("bulk_batches_applied_total", &[("action_type", "upsert")]) == batches,
        "{}",
        consumer.text
    );
    ensure!(
        consumer.sum(
            "bulk_batch_attempt_duration_seconds_count",
            &[("action_type", "upsert"), ("result", "applied")]
        ) == batches,
        "{}",
        consumer.text
    );
    ensure!(consumer.sum("bulk_batches_dead_lettered_total", &[]) == 0.0);
    ensure!(consumer.sum("bulk_work_oldest_pending_age_seconds", &[]) >= 0.0);
    ensure!(projector.sum("bulk_projector_actions_projected_total", &[]) >= 1.0);
    ensure!(projector.has("bulk_projector_lag_feed_entries"));

    ensure!(
        api.sum(
            "bulk_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/bulk-actions"),
                ("status", "202")
            ]
        ) == 1.0,
        "{}",
        api.text
    );
    ensure!(
        api.sum(
            "bulk_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/bulk-actions/{action_id}"),
                ("status", "200")
            ]
        ) >= 1.0,
        "{}",
        api.text
    );
    ensure!(api.has("bulk_http_request_duration_seconds_bucket"));
    ensure!(
        api.sum(
            "bulk_rate_limit_refusals_total",
            &[("code", "rate_limited")]
        ) >= 1.0,
        "{}",
        api.text
    );
    ensure!(
        api.sum(
            "bulk_actions_submitted_total",
            &[("action_type", "upsert"), ("entity_type", "contact")]
        ) == 1.0
    );
    ensure!(
        api.sum("bulk_sse_subscribers", &[]) == 0.0,
        "a closed stream is still counted"
    );

    // No label takes a tenant's value: no action id, account or email in any scrape.
    for (process, scrape) in [
        ("api", &api),
        ("consumer", &consumer),
        ("projector", &projector),
    ] {
        for forbidden in [action.as_str(), ACCOUNT, LIMITED, "metrics.example"] {
            ensure!(
                !scrape.text.contains(forbidden),
                "{process} metrics name {forbidden:?}"
            );
        }
    }

    // The public port has no /metrics (decision 0055): it is on METRICS_PORT only.
    let status = call(&deployment, Method::GET, "/metrics", None, &key).await?;
    ensure!(status == 404, "public /metrics: {status}");

    // A path that matched no route is `unmatched`, never its raw path.
    let status = call(&deployment, Method::GET, "/no/such/place-42", None, &key).await?;
    ensure!(status == 404);
    let api = scrape(&http, &urls.api).await?;
    ensure!(api.sum("bulk_http_requests_total", &[("route", "unmatched")]) >= 1.0);
    ensure!(!api.text.contains("place-42"));

    ensure!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}
