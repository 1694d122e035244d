//! Webhooks end to end (issue 16, decision 0053): the real binaries deliver to a receiver in
//! this process, and every delivery it records is verified with the official Standard
//! Webhooks library (PyPI `standardwebhooks`, `STANDARDWEBHOOKS_PYTHON`, installed by
//! scripts/test.sh). Private networks are allowed in these deployments (the receiver is on
//! 127.0.0.1), except in the test that proves they are refused without the setting.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use bulk_tests::{AppOptions, Deployment, DeploymentOptions, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// One deployment at a time: each is several processes on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(90);

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    fn action(&self) -> String {
        self.json()["data"]["actionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// An HTTP receiver on 127.0.0.1 that records every request. What it answers depends on
/// the path's first segment: `ok` 200; `flaky` 500 three times, then 200; `gone` 410;
/// `hang` never answers its first request, then 200; `blackhole` never answers.
#[derive(Clone, Default)]
struct Receiver {
    log: Arc<Mutex<Vec<Received>>>,
    base: String,
}

impl Receiver {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let receiver = Receiver {
            log: Arc::default(),
            base,
        };
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(receiver)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    fn at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until the requests to `path` satisfy `done`.
    async fn wait(&self, path: &str, done: impl Fn(&[Received]) -> bool) -> Result<Vec<Received>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.at(path);
            if done(&got) {
                return Ok(got);
            }
            if Instant::now() > deadline {
                bail!("{path} got {:#?}", summary(&got));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn summary(received: &[Received]) -> Vec<(String, String, String)> {
    received
        .iter()
        .map(|r| (r.id.clone(), r.event_type(), r.action()))
        .collect()
}

async fn receive(
    State(receiver): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let path = uri.path().to_owned();
    let count = {
        let Ok(mut log) = receiver.log.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR;
        };
        log.push(Received {
            path: path.clone(),
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body,
        });
        log.iter().filter(|r| r.path == path).count()
    };
    match path.split('/').nth(1).unwrap_or_default() {
        "flaky" if count <= 3 => StatusCode::INTERNAL_SERVER_ERROR,
        "gone" => StatusCode::GONE,
        "blackhole" => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            StatusCode::OK
        }
        "hang" if count == 1 => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            StatusCode::OK
        }
        _ => StatusCode::OK,
    }
}

/// Verifies each delivery with `standardwebhooks.Webhook(secret).verify(body, headers)`:
/// `valid` says whether it must pass (a wrong secret must not).
async fn verify_with_the_standard_library(cases: &[(&str, &Received, bool)]) -> Result<()> {
    let python = std::env::var("STANDARDWEBHOOKS_PYTHON").context(
        "STANDARDWEBHOOKS_PYTHON is not set: run scripts/test.sh, which installs standardwebhooks",
    )?;
    let input: Vec<Value> = cases
        .iter()
        .map(|(secret, received, valid)| {
            json!({
                "secret": secret,
                "body": received.body,
                "headers": {
                    "webhook-id": received.id,
                    "webhook-timestamp": received.timestamp,
                    "webhook-signature": received.signature,
                },
                "valid": valid,
            })
        })
        .collect();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
failures = []
cases = json.load(sys.stdin)
for case in cases:
    try:
        Webhook(case["secret"]).verify(case["body"], case["headers"])
        verified = True
    except Exception as error:
        verified = False
        reason = repr(error)
    if verified != case["valid"]:
        failures.append((case["headers"]["webhook-id"], case["valid"], None if verified else reason))
if failures:
    print("unexpected verifications:", failures)
    sys.exit(1)
print("verified", len(cases))
"#;
    let mut child = tokio::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin
            .write_all(serde_json::to_string(&input)?.as_bytes())
            .await?;
    }
    let output = child.wait_with_output().await?;
    ensure!(
        output.status.success(),
        "standardwebhooks refused: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Requests of the webhook api, authenticated as `account`.
struct Hooks<'a> {
    client: &'a bulk_tests::ApiClient,
    key: String,
}

impl<'a> Hooks<'a> {
    async fn of(client: &'a bulk_tests::ApiClient, account: &str) -> Result<Self> {
        Ok(Self {
            client,
            key: client.key_for(account).await?,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let auth = format!("Bearer {}", self.key);
        let reply = self
            .client
            .send(method, path, body, &[("authorization", auth.as_str())])
            .await?;
        Ok((reply.status, reply.body))
    }

    /// Registers `url` for `events`; returns (id, secret).
    async fn register(&self, url: &str, events: &[&str]) -> Result<(String, String)> {
        let (status, body) = self
            .call(
                Method::POST,
                "/webhooks",
                Some(&json!({ "url": url, "events": events })),
            )
            .await?;
        ensure!(status == 201, "registering {url}: {status} {body}");
        let secret = body["secret"].as_str().context("secret")?.to_owned();
        ensure!(secret.starts_with("whsec_"), "{body}");
        ensure!(
            body["url"] == url && body["createdAt"].is_string(),
            "{body}"
        );
        Ok((body["id"].as_str().context("id")?.to_owned(), secret))
    }

    async fn deliveries(&self, id: &str) -> Result<Vec<Value>> {
        let (status, body) = self
            .call(Method::GET, &format!("/webhooks/{id}/deliveries"), None)
            .await?;
        ensure!(status == 200, "{status} {body}");
        Ok(body["items"].as_array().cloned().unwrap_or_default())
    }
}

fn upsert(account: &str, records: usize) -> Value {
    let data: Vec<Value> = (0..records)
        .map(|i| json!({ "email": format!("user{i}@{account}.io"), "name": format!("User {i}") }))
        .collect();
    json!({ "accountId": account, "entityType": "contact", "actionType": "upsert", "data": data })
}

fn options(env: &[(&'static str, &str)]) -> DeploymentOptions {
    let mut options = DeploymentOptions::default();
    options
        .env
        .push(("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true".to_owned()));
    options.env.push(("WEBHOOK_POLL_MS", "50".to_owned()));
    options
        .env
        .extend(env.iter().map(|(name, value)| (*name, (*value).to_owned())));
    options
}

fn of_action<'r>(received: &'r [Received], action: &str) -> Vec<&'r Received> {
    received.iter().filter(|r| r.action() == action).collect()
}

/// Started and completed deliveries arrive signed and verify; a receiver that fails three
/// times gets the same webhook-id four times; a 410 disables its endpoint; after a rotation
/// both secrets verify; another account cannot see or delete an endpoint; a redelivery
/// keeps the webhook-id; the endpoints of an account are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_under_one_id_and_verify_with_the_standard_library(
) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let receiver = Receiver::start().await?;
    let deployment = Deployment::start(
        options(&[("WEBHOOK_RETRY_SCHEDULE_MS", "0,200,400,600,800")]),
        &["c1"],
    )
    .await?;
    let client = &deployment.client;
    let acme = Hooks::of(client, "acme").await?;
    let all = [
        "action.started",
        "action.paused",
        "action.resumed",
        "action.cancelling",
        "action.completed",
        "action.failed",
        "action.cancelled",
    ];
    let (ok, ok_secret) = acme.register(&receiver.url("/ok"), &all).await?;
    let (flaky, flaky_secret) = acme
        .register(&receiver.url("/flaky"), &["action.completed"])
        .await?;
    let (gone, gone_secret) = acme
        .register(&receiver.url("/gone"), &["action.started"])
        .await?;

    let first = client.submit(&upsert("acme", 20)).await?;
    let view = client.wait_projected_terminal(&first, WAIT).await?;
    ensure!(view["status"] == "completed", "{view}");

    // Started and Completed, each verified, with the action's view as data.
    let got = receiver
        .wait("/ok", |got| {
            let types: Vec<String> = got.iter().map(Received::event_type).collect();
            types.contains(&"action.started".to_owned())
                && types.contains(&"action.completed".to_owned())
        })
        .await?;
    let started = got
        .iter()
        .find(|r| r.event_type() == "action.started")
        .context("started")?;
    let completed = got
        .iter()
        .find(|r| r.event_type() == "action.completed")
        .context("completed")?;
    for delivery in [started, completed] {
        let body = delivery.json();
        ensure!(delivery.id.starts_with("msg_"), "{delivery:?}");
        ensure!(body["timestamp"].is_string(), "{body}");
        ensure!(
            body["data"]["actionId"] == first.as_str() && body["data"]["accountId"] == "acme",
            "{body}"
        );
        ensure!(
            delivery.signature.starts_with("v1,") && !delivery.signature.contains(' '),
            "one secret, one signature: {delivery:?}"
        );
    }
    ensure!(completed.json()["data"]["status"] == "completed");
    ensure!(completed.json()["data"]["succeeded"] == 20);

    // Three failures, then success: four attempts under one webhook-id.
    let flaky_got = receiver.wait("/flaky", |got| got.len() >= 4).await?;
    ensure!(flaky_got.len() == 4, "{:?}", summary(&flaky_got));
    ensure!(
        flaky_got.iter().all(|r| r.id == flaky_got[0].id),
        "{:?}",
        summary(&flaky_got)
    );
    let deadline = Instant::now() + WAIT;
    let flaky_delivery = loop {
        let items = acme.deliveries(&flaky).await?;
        if items.first().is_some_and(|d| d["state"] == "succeeded") {
            break items[0].clone();
        }
        ensure!(Instant::now() < deadline, "{items:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(flaky_delivery["id"] == flaky_got[0].id.as_str());
    ensure!(flaky_delivery["attemptCount"] == 4, "{flaky_delivery}");
    let codes: Vec<u64> = flaky_delivery["attempts"]
        .as_array()
        .context("attempts")?
        .iter()
        .filter_map(|a| a["statusCode"].as_u64())
        .collect();
    ensure!(codes == [500, 500, 500, 200], "{flaky_delivery}");

    // 410 Gone disables the endpoint.
    let gone_got = receiver.wait("/gone", |got| !got.is_empty()).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = acme
            .call(Method::GET, &format!("/webhooks/{gone}"), None)
            .await?;
        ensure!(status == 200, "{status} {body}");
        if body["disabledAt"].is_string() {
            break;
        }
        ensure!(Instant::now() < deadline, "not disabled: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_deliveries = acme.deliveries(&gone).await?;
    ensure!(
        gone_deliveries[0]["state"] == "failed",
        "{gone_deliveries:?}"
    );

    let mut cases: Vec<(&str, &Received, bool)> = Vec::new();
    cases.extend(got.iter().map(|r| (ok_secret.as_str(), r, true)));
    cases.extend(flaky_got.iter().map(|r| (flaky_secret.as_str(), r, true)));
    cases.extend(gone_got.iter().map(|r| (gone_secret.as_str(), r, true)));
    cases.push((flaky_secret.as_str(), completed, false));
    verify_with_the_standard_library(&cases).await?;

    // Another account sees none of it.
    let other = Hooks::of(client, "other").await?;
    for (method, path) in [
        (Method::GET, format!("/webhooks/{ok}")),
        (Method::DELETE, format!("/webhooks/{ok}")),
        (Method::POST, format!("/webhooks/{ok}/rotate-secret")),
        (Method::GET, format!("/webhooks/{ok}/deliveries")),
    ] {
        let (status, body) = other.call(method.clone(), &path, None).await?;
        ensure!(
            (status, body["error"]["code"].as_str()) == (404, Some("webhook_not_found")),
            "{method} {path}: {status} {body}"
        );
    }
    let (_, listed) = other.call(Method::GET, "/webhooks", None).await?;
    ensure!(listed["items"] == json!([]), "{listed}");
    let (status, listed) = acme.call(Method::GET, "/webhooks", None).await?;
    ensure!(status == 200 && listed["items"].as_array().map(Vec::len) == Some(3));
    ensure!(
        listed["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|item| item.get("secret").is_none())),
        "secrets are shown once: {listed}"
    );

    // Rotation: both secrets sign for a while.
    let (status, rotated) = acme
        .call(Method::POST, &format!("/webhooks/{ok}/rotate-secret"), None)
        .await?;
    ensure!(status == 200, "{status} {rotated}");
    let new_secret = rotated["secret"].as_str().context("secret")?.to_owned();
    ensure!(new_secret != ok_secret && new_secret.starts_with("whsec_"));
    ensure!(rotated["previousSecretExpiresAt"].is_string(), "{rotated}");
    // A second rotation during the overlap would drop the original secret at once: refused.
    let (status, again) = acme
        .call(Method::POST, &format!("/webhooks/{ok}/rotate-secret"), None)
        .await?;
    ensure!(
        status == 409
            && again["error"]["code"] == "rotation_in_progress"
            && again["error"]["details"]["previousSecretExpiresAt"]
                == rotated["previousSecretExpiresAt"],
        "{status} {again}"
    );
    let second = client.submit(&upsert("acme", 5)).await?;
    client.wait_projected_terminal(&second, WAIT).await?;
    let got = receiver
        .wait("/ok", |got| {
            got.iter()
                .any(|r| r.action() == second && r.event_type() == "action.completed")
        })
        .await?;
    let after = of_action(&got, &second);
    ensure!(after.iter().all(|r| r.signature.split(' ').count() == 2));
    let mut cases: Vec<(&str, &Received, bool)> = Vec::new();
    for delivery in &after {
        cases.push((ok_secret.as_str(), delivery, true));
        cases.push((new_secret.as_str(), delivery, true));
        cases.push((flaky_secret.as_str(), delivery, false));
    }
    verify_with_the_standard_library(&cases).await?;
    // The disabled endpoint got nothing of the second action.
    ensure!(of_action(&receiver.at("/gone"), &second).is_empty());

    // A redelivery keeps the webhook-id.
    let ok_deliveries = acme.deliveries(&ok).await?;
    let first_completed = ok_deliveries
        .iter()
        .find(|d| d["actionId"] == first.as_str() && d["eventType"] == "action.completed")
        .context("the first action's completed delivery")?;
    let id = first_completed["id"].as_str().context("id")?.to_owned();
    ensure!(first_completed["state"] == "succeeded", "{first_completed}");
    let (status, body) = acme
        .call(
            Method::POST,
            &format!("/webhooks/{ok}/deliveries/{id}/redeliver"),
            None,
        )
        .await?;
    ensure!(status == 202, "{status} {body}");
    receiver
        .wait("/ok", |got| got.iter().filter(|r| r.id == id).count() == 2)
        .await?;
    let (status, body) = acme
        .call(
            Method::POST,
            &format!("/webhooks/{ok}/deliveries/msg_nothing/redeliver"),
            None,
        )
        .await?;
    ensure!(
        (status, body["error"]["code"].as_str()) == (404, Some("delivery_not_found")),
        "{status} {body}"
    );

    // Delete, and the bound on endpoints.
    let (status, _) = acme
        .call(Method::DELETE, &format!("/webhooks/{flaky}"), None)
        .await?;
    ensure!(status == 204);
    let (status, _) = acme
        .call(Method::GET, &format!("/webhooks/{flaky}"), None)
        .await?;
    ensure!(status == 404);
    let many = Hooks::of(client, "many").await?;
    for i in 0..20 {
        many.register(&receiver.url(&format!("/ok/{i}")), &["action.completed"])
            .await?;
    }
    let (status, body) = many
        .call(
            Method::POST,
            "/webhooks",
            Some(&json!({ "url": receiver.url("/ok/21"), "events": ["action.completed"] })),
        )
        .await?;
    ensure!(
        (status, body["error"]["code"].as_str()) == (409, Some("too_many_webhooks")),
        "{status} {body}"
    );
    Ok(())
}

/// A deliverer SIGKILLed in the middle of an attempt loses nothing: another process sends
/// the attempt again, under the same webhook-id, once its lease ends, and takes over the
/// hooks entries the dead one had read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliverer_killed_mid_attempt_loses_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let receiver = Receiver::start().await?;
    let mut deployment = Deployment::start(
        options(&[
            ("WEBHOOK_TIMEOUT_MS", "3000"),
            ("WEBHOOK_RETRY_SCHEDULE_MS", "0,300,600,900"),
        ]),
        &["c1"],
    )
    .await?;
    let hooks = Hooks::of(&deployment.client, "acme").await?;
    let (_, secret) = hooks
        .register(
            &receiver.url("/hang"),
            &["action.started", "action.completed"],
        )
        .await?;
    let action = deployment.client.submit(&upsert("acme", 20)).await?;
    receiver.wait("/hang", |got| !got.is_empty()).await?;
    deployment.kill_consumer("c1");
    let killed_at = Instant::now();
    deployment.start_consumer("c2")?;
    deployment
        .client
        .wait_projected_terminal(&action, WAIT)
        .await?;
    let got = receiver
        .wait("/hang", |got| {
            let has = |t: &str| got.iter().any(|r| r.event_type() == t);
            has("action.started") && has("action.completed") && got.len() >= 3
        })
        .await?;
    // The first request, the one that never got its answer, is made again under its id;
    // every other delivery once. (Which event it is, started or completed, depends on
    // which of the two a sender took first.)
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for delivery in &got {
        *by_id.entry(delivery.id.as_str()).or_default() += 1;
    }
    let interrupted = got[0].id.as_str();
    ensure!(
        by_id.get(interrupted) == Some(&2)
            && by_id.iter().all(|(id, n)| *id == interrupted || *n == 1),
        "the interrupted attempt is made again under its id: {:?}",
        summary(&got)
    );
    let types: BTreeSet<String> = got.iter().map(Received::event_type).collect();
    ensure!(
        types == BTreeSet::from(["action.started".to_owned(), "action.completed".to_owned()]),
        "{:?}",
        summary(&got)
    );
    // Not before the dead process' lease ran out (3 s timeout + 10 s).
    ensure!(killed_at.elapsed() >= Duration::from_secs(10));
    let cases: Vec<(&str, &Received, bool)> =
        got.iter().map(|r| (secret.as_str(), r, true)).collect();
    verify_with_the_standard_library(&cases).await
}

/// One account's endpoints that never answer hold at most `WEBHOOK_ACCOUNT_IN_FLIGHT`
/// senders: another account's delivery goes out within seconds, not after their timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_whose_endpoints_hang_does_not_hold_up_another() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let receiver = Receiver::start().await?;
    let deployment = Deployment::start(
        options(&[
            ("WEBHOOK_TIMEOUT_MS", "120000"),
            ("WEBHOOK_DELIVERY_CONCURRENCY", "3"),
            ("WEBHOOK_ACCOUNT_IN_FLIGHT", "2"),
        ]),
        &["c1"],
    )
    .await?;
    let slow = Hooks::of(&deployment.client, "slowco").await?;
    for n in 0..3 {
        slow.register(
            &receiver.url(&format!("/blackhole/{n}")),
            &["action.started", "action.completed"],
        )
        .await?;
    }
    for _ in 0..2 {
        deployment.client.submit(&upsert("slowco", 5)).await?;
    }
    // The slow account's attempts are under way (and will hang for minutes)...
    let deadline = Instant::now() + WAIT;
    while receiver
        .received()
        .iter()
        .filter(|r| r.path.starts_with("/blackhole/"))
        .count()
        < 2
    {
        ensure!(
            Instant::now() < deadline,
            "no attempt reached the blackhole"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and are given more time to take every sender, were they allowed to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quick = Hooks::of(&deployment.client, "quickco").await?;
    quick
        .register(&receiver.url("/ok/quick"), &["action.started"])
        .await?;
    let submitted = Instant::now();
    let action = deployment.client.submit(&upsert("quickco", 5)).await?;
    let got = receiver
        .wait("/ok/quick", |got| !of_action(got, &action).is_empty())
        .await?;
    let took = submitted.elapsed();
    ensure!(
        took < Duration::from_secs(20),
        "the quick account's delivery took {took:?}: {:?}",
        summary(&got)
    );
    let hung = receiver
        .received()
        .iter()
        .filter(|r| r.path.starts_with("/blackhole/"))
        .count();
    ensure!(
        hung == 2,
        "{hung} attempts to the blackhole at once; at most 2 allowed"
    );
    Ok(())
}

/// A scheduled action paused and resumed many times (its stream grows at the request rate)
/// gets every `action.paused`/`action.resumed` delivered, each saying which event it is
/// (`eventSeq`) and which seq its view is as of (`lastSeq`): exactly the event's up to seq
/// 64, folded from the stream's start; past it, whatever the projector has (never a fold
/// of the whole stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toggled_action_gets_every_delivery_with_the_seq_its_view_is_as_of() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let receiver = Receiver::start().await?;
    let deployment = Deployment::start(options(&[]), &["c1"]).await?;
    let client = &deployment.client;
    let hooks = Hooks::of(client, "toggler").await?;
    hooks
        .register(
            &receiver.url("/ok/toggle"),
            &["action.paused", "action.resumed"],
        )
        .await?;
    let mut body = upsert("toggler", 5);
    let later = domain::Timestamp::from_millis(infra::clock::now().millis() + 3_600_000)
        .context("a time an hour away")?;
    body["scheduledFor"] = json!(later.to_string());
    let action = client.submit(&body).await?;
    let toggles = 45;
    for _ in 0..toggles {
        for command in ["pause", "resume"] {
            let (status, reply) = client
                .post_json(&format!("/bulk-actions/{action}/{command}"), &json!({}))
                .await?;
            ensure!(status == 200, "{command}: {status} {reply}");
        }
    }
    let got = receiver
        .wait("/ok/toggle", |got| {
            of_action(got, &action).len() >= 2 * toggles
        })
        .await?;
    let mut seqs = BTreeSet::new();
    for delivery in of_action(&got, &action) {
        let payload = delivery.json();
        let data = &payload["data"];
        let (Some(event_seq), Some(last_seq)) =
            (data["eventSeq"].as_u64(), data["lastSeq"].as_u64())
        else {
            bail!("no eventSeq or lastSeq: {payload}");
        };
        ensure!(seqs.insert(event_seq), "{event_seq} twice");
        ensure!(last_seq >= event_seq, "{payload}");
        if event_seq <= 64 {
            let status = if delivery.event_type() == "action.paused" {
                "paused"
            } else {
                "scheduled"
            };
            ensure!(
                last_seq == event_seq && data["status"] == status,
                "folded to its own event: {payload}"
            );
        }
    }
    ensure!(seqs.len() == 2 * toggles, "{} deliveries", seqs.len());
    Ok(())
}

/// A hooks entry the intake fails on every time (here an event far past any view of its
/// action) holds up nothing: later entries are taken in meanwhile, after a restart of the
/// process holding it too (one pass over its own pending entries, then new ones), and it is
/// given up after 10 deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hooks_entry_that_always_fails_holds_up_nothing_and_is_given_up() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let receiver = Receiver::start().await?;
    let mut deployment = Deployment::start(options(&[("CLAIM_IDLE_MS", "300")]), &["c1"]).await?;
    let hooks = Hooks::of(&deployment.client, "acme").await?;
    hooks
        .register(&receiver.url("/ok/poison"), &["action.started"])
        .await?;
    let first = deployment.client.submit(&upsert("acme", 5)).await?;
    deployment
        .client
        .wait_projected_terminal(&first, WAIT)
        .await?;
    receiver
        .wait("/ok/poison", |got| !of_action(got, &first).is_empty())
        .await?;
    let keys = deployment.keys();
    let action = domain::ActionId::parse(&first).context("an action id")?;
    let stream = keys.hooks(keys.partition_of(action));
    let mut conn = infra::redis_conn::shared(&deployment.redis_url()).await?;
    let poison: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(&["action", first.as_str(), "seq", "100000", "type", "Started"])
        .query_async(&mut conn)
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    deployment.kill_consumer("c1");
    deployment.start_consumer("c1")?;
    let second = deployment.client.submit(&upsert("acme", 5)).await?;
    receiver
        .wait("/ok/poison", |got| !of_action(got, &second).is_empty())
        .await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("webhooks")
            .arg(&poison)
            .arg(&poison)
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let length: usize = redis::AsyncCommands::xlen(&mut conn, &stream).await?;
        if pending.is_empty() && length == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the failing entry is still there: {pending:?}, stream length {length}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Given up, not taken in: the consumer says so.
    let mut given_up = false;
    for entry in std::fs::read_dir(deployment.logs_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "log") {
            given_up |= std::fs::read_to_string(&path)?.contains("webhook_hooks_entry_given_up");
        }
    }
    ensure!(given_up, "no consumer log says the entry was given up");
    Ok(())
}

/// An endpoint's deliveries are bounded without losing one still pending (a receiver
/// down): the finished ones are trimmed to the newest 100, the pending ones to 1,000, past
/// which the oldest is failed with a reason, listed and redeliverable, never deleted. An
/// endpoint deleted meanwhile gets nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_are_failed_past_their_bound_never_deleted() -> Result<()> {
    use infra::webhooks::{
        Delivery, DeliveryState, Endpoint, Redelivery, Settlement, Webhooks, KEEP_DELIVERIES,
        MAX_PENDING_DELIVERIES,
    };
    let _serial = SERIAL.lock().await;
    let services = bulk_tests::Services::start()?;
    let keys = infra::keys::Keys::new("bulk", 4);
    let webhooks = Webhooks::new(
        infra::redis_conn::shared(&services.redis_url).await?,
        keys.clone(),
    );
    let account = domain::AccountId::parse("downco")?;
    let now = infra::clock::now();
    let endpoint = Endpoint {
        id: "ep_down".into(),
        url: "https://hooks.example.com/down".into(),
        events: vec![domain::webhook::WebhookEvent::Started],
        secret: domain::webhook::secret_from_bytes(&[7; 32]),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: now,
        disabled_at: None,
        disabled_reason: None,
    };
    ensure!(webhooks.create(&account, &endpoint).await?);
    let action = domain::ActionId::parse("01JDQ6V4J8Q0Y5Z6X7W8V9T0S1").context("action id")?;
    let delivery = |seq: u64| Delivery {
        id: domain::webhook::message_id(&endpoint.id, action, seq),
        endpoint_id: endpoint.id.clone(),
        account_id: account.clone(),
        action_id: action,
        seq,
        event_type: domain::webhook::WebhookEvent::Started,
        body: "{}".into(),
        created_at: now,
        state: DeliveryState::Pending,
        attempt_count: 0,
        failed_in_round: 0,
        attempts: Vec::new(),
        next_attempt_at: Some(now),
        failure_reason: None,
    };
    // 105 delivered, then one more: the finished ones are trimmed to 100.
    for seq in 1..=105 {
        ensure!(webhooks.enqueue(&delivery(seq)).await?);
    }
    let partition = keys.account_partition(&account);
    let mut settled = 0;
    while let Some(claim) = webhooks.claim(partition, 60_000, 2).await? {
        let mut done = webhooks
            .delivery(&account, &endpoint.id, &claim.delivery_id)
            .await?
            .context("claimed delivery")?;
        done.state = DeliveryState::Succeeded;
        done.next_attempt_at = None;
        let settlement = Settlement {
            delivery: done,
            retry_in: None,
            disable: None,
        };
        webhooks.settle(&claim, &settlement).await?;
        settled += 1;
    }
    ensure!(settled == 105, "{settled} settled");
    ensure!(webhooks.enqueue(&delivery(106)).await?);
    let listed = webhooks.deliveries(&account, &endpoint.id, 5000).await?;
    ensure!(listed.len() == KEEP_DELIVERIES + 1, "{} kept", listed.len());
    // The receiver is down: every delivery stays pending, none is deleted; past the bound
    // the oldest pending ones are failed with the reason, and only finished ones go.
    let extra = 5;
    for seq in 107..=(106 + MAX_PENDING_DELIVERIES as u64 - 1 + extra) {
        ensure!(webhooks.enqueue(&delivery(seq)).await?);
    }
    let listed = webhooks.deliveries(&account, &endpoint.id, 5000).await?;
    let count = |state: DeliveryState| listed.iter().filter(|d| d.state == state).count();
    ensure!(
        count(DeliveryState::Pending) == MAX_PENDING_DELIVERIES
            && count(DeliveryState::Failed) == extra as usize
            && listed.len() == MAX_PENDING_DELIVERIES + KEEP_DELIVERIES,
        "pending {}, failed {}, in all {}",
        count(DeliveryState::Pending),
        count(DeliveryState::Failed),
        listed.len()
    );
    let failed = listed
        .iter()
        .find(|d| d.state == DeliveryState::Failed)
        .context("a failed delivery")?;
    // The listing the api shows (the newest 100) has the failed ones among the newest.
    let newest = webhooks
        .deliveries(&account, &endpoint.id, KEEP_DELIVERIES)
        .await?;
    ensure!(
        newest
            .iter()
            .filter(|d| d.state == DeliveryState::Failed)
            .count()
            == extra as usize,
        "{:?}",
        newest.iter().map(|d| d.state).collect::<Vec<_>>()
    );
    ensure!(
        failed.failure_reason.as_deref() == Some(infra::webhooks::TOO_MANY_PENDING)
            && failed.next_attempt_at.is_none(),
        "{failed:?}"
    );
    let mut conn = infra::redis_conn::shared(&services.redis_url).await?;
    let due: usize = redis::AsyncCommands::zcard(&mut conn, keys.webhook_due(partition)).await?;
    ensure!(due == MAX_PENDING_DELIVERIES, "{due} due");
    let (redelivered, again) = webhooks
        .redeliver(&account, &endpoint.id, &failed.id, infra::clock::now())
        .await?;
    ensure!(
        redelivered == Redelivery::Scheduled
            && again
                .is_some_and(|d| d.failure_reason.is_none() && d.state == DeliveryState::Pending),
        "{redelivered:?}"
    );
    // An endpoint deleted while its deliveries are being made gets none stored (no keys
    // left behind).
    ensure!(webhooks.delete(&account, &endpoint.id).await?);
    ensure!(!webhooks.enqueue(&delivery(5000)).await?);
    let left: usize = redis::AsyncCommands::exists(
        &mut conn,
        &[
            keys.webhook_deliveries(&account, &endpoint.id),
            keys.webhook_log(&account, &endpoint.id),
            keys.webhook_pending(&account, &endpoint.id),
        ],
    )
    .await?;
    ensure!(left == 0, "{left} keys of a deleted endpoint");
    Ok(())
}

/// Without `WEBHOOK_ALLOW_PRIVATE_NETWORKS`, endpoints must be https to public addresses:
/// loopback, private and cloud-metadata addresses are refused with a clear code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_addresses_are_refused_without_the_setting() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn(AppOptions {
        consumers: 0,
        projectors: 0,
        ..AppOptions::default()
    })
    .await?;
    let hooks = Hooks::of(&app.client, "acme").await?;
    for (url, code) in [
        ("http://127.0.0.1/hook", "webhook_url_not_allowed"),
        ("https://127.0.0.1/hook", "webhook_url_not_allowed"),
        (
            "https://169.254.169.254/latest/meta-data/",
            "webhook_url_not_allowed",
        ),
        ("https://[fd00:ec2::254]/", "webhook_url_not_allowed"),
        ("https://10.1.2.3/", "webhook_url_not_allowed"),
        ("https://100.64.0.1/", "webhook_url_not_allowed"),
        ("https://[::ffff:192.168.0.1]/", "webhook_url_not_allowed"),
        ("https://localhost/hook", "webhook_url_not_allowed"),
        ("http://hooks.example.com/", "webhook_url_not_allowed"),
        ("not a url", "invalid_webhook_url"),
        ("https://user:pw@hooks.example.com/", "invalid_webhook_url"),
    ] {
        let (status, body) = hooks
            .call(
                Method::POST,
                "/webhooks",
                Some(&json!({ "url": url, "events": ["action.completed"] })),
            )
            .await?;
        ensure!(
            (status, body["error"]["code"].as_str()) == (400, Some(code)),
            "{url}: {status} {body}"
        );
    }
    let (status, body) = hooks
        .call(
            Method::POST,
            "/webhooks",
            Some(&json!({ "url": "https://169.254.169.254/", "events": ["action.completed"] })),
        )
        .await?;
    ensure!(
        status == 400 && body["error"]["details"]["address"] == "cloud metadata",
        "{body}"
    );
    for (body, code) in [
        (
            json!({ "url": "https://hooks.example.com/" }),
            "missing_field",
        ),
        (
            json!({ "url": "https://hooks.example.com/", "events": ["action.exploded"] }),
            "invalid_field",
        ),
        (
            json!({ "url": "https://hooks.example.com/", "events": [] }),
            "invalid_field",
        ),
        (
            json!({ "url": "https://hooks.example.com/", "events": ["action.completed"], "x": 1 }),
            "unknown_field",
        ),
    ] {
        let (status, reply) = hooks.call(Method::POST, "/webhooks", Some(&body)).await?;
        ensure!(
            (status, reply["error"]["code"].as_str()) == (400, Some(code)),
            "{body}: {status} {reply}"
        );
    }
    // A public https endpoint is accepted; no API key, no webhooks.
    hooks
        .register("https://hooks.example.com/crm", &["action.completed"])
        .await?;
    let reply = app.client.send(Method::GET, "/webhooks", None, &[]).await?;
    ensure!(reply.status == 401, "{reply:?}");
    Ok(())
}
