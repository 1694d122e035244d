//! The web dashboard in a real browser: Debian's Chromium driven through ChromeDriver
//! (WebDriver, `fantoccini`) against the api of a test deployment. It signs in, uploads a
//! 20,000-row CSV, watches the progress bar reach 100% without a reload, filters the
//! failed rows, downloads the failed file, cancels another running action, and never sees
//! another account's action. Screenshots of each page go to
//! `$CARGO_TARGET_DIR/screenshots/` (and to `docs/screenshots/` with
//! `UPDATE_SCREENSHOTS=1`, for the README).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bulk_tests::{AppOptions, TestApp};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const ROWS: usize = 20_000;
/// Every 250th row has an email that cannot be one: those rows fail.
const BAD_EVERY: usize = 250;

/// ChromeDriver as a child process on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Result<Driver> {
    let chromedriver = bulk_tests::binary(
        "CHROMEDRIVER",
        &[
            bulk_tests::which("chromedriver"),
            vec![PathBuf::from("/usr/bin/chromedriver")],
        ]
        .concat(),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("chromedriver (scripts/deps.sh installs chromium-driver)")?;
    let driver = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(driver)
}

async fn browser(driver: &Driver, downloads: &Path, profile: &Path) -> Result<Client> {
    // Two TLS back ends are linked (ring and aws-lc-rs, through different crates): name one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chromium = bulk_tests::binary(
        "CHROMIUM",
        &[
            bulk_tests::which("chromium"),
            vec![PathBuf::from("/usr/bin/chromium")],
        ]
        .concat(),
    )?;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            // Without the background-networking flags Chromium keeps dialling Google on a
            // closed network.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic",
                format!("--user-data-dir={}", profile.display()),
                "--window-size=1280,900",
            ],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        }),
    );
    Ok(ClientBuilder::rustls()?
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await?)
}

/// The value of a JavaScript expression on the page.
async fn eval(client: &Client, expression: &str) -> Result<Value> {
    Ok(client
        .execute(&format!("return ({expression});"), vec![])
        .await?)
}

/// Polls `expression` until it is truthy; fails with its last value after `timeout`.
async fn wait_until(client: &Client, expression: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let value = eval(client, expression).await?;
        let truthy = match &value {
            Value::Null => false,
            Value::Bool(flag) => *flag,
            Value::String(text) => !text.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return Ok(value);
        }
        if Instant::now() > deadline {
            let page = eval(client, "document.getElementById('main').innerText").await?;
            bail!("`{expression}` not true after {timeout:?}; page: {page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every form control of the page has a label, and every button a name.
async fn check_labels(client: &Client, page: &str) -> Result<()> {
    let unlabelled = eval(
        client,
        "[...document.querySelectorAll('input, select')].filter((c) => !c.labels || !c.labels.length).map((c) => c.id || c.outerHTML)
         .concat([...document.querySelectorAll('button')].filter((b) => !b.textContent.trim() && !b.getAttribute('aria-label')).map((b) => b.outerHTML))",
    )
    .await?;
    ensure!(
        unlabelled.as_array().is_some_and(Vec::is_empty),
        "{page}: controls without a label: {unlabelled}"
    );
    Ok(())
}

async fn screenshot(client: &Client, name: &str) -> Result<()> {
    let png = client.screenshot().await?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("screenshots");
    std::fs::create_dir_all(&target)?;
    std::fs::write(target.join(name), &png)?;
    if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|update| update == "1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs)?;
        std::fs::write(docs.join(name), &png)?;
    }
    Ok(())
}

fn csv_file(dir: &Path) -> Result<PathBuf> {
    let mut text = String::from("email,name\n");
    for i in 0..ROWS {
        if i % BAD_EVERY == 7 {
            text.push_str(&format!("not-an-email-{i},Bad {i}\n"));
        } else {
            text.push_str(&format!("person{i}@dash.example,Person {i}\n"));
        }
    }
    let path = dir.join("contacts.csv");
    std::fs::write(&path, text)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_runs_an_import_in_a_real_browser() -> Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let files = tempfile::tempdir()?;
    let downloads = files.path().join("downloads");
    let profile = files.path().join("profile");
    std::fs::create_dir_all(&downloads)?;
    let driver = start_driver()?;
    let client = browser(&driver, &downloads, &profile).await?;
    let outcome = run(&app, &client, files.path(), &downloads).await;
    let _ = client.close().await;
    outcome
}

async fn run(app: &TestApp, client: &Client, dir: &Path, downloads: &Path) -> Result<()> {
    let key = app.key_for("acme").await?;
    // Another account's action, which the dashboard must never show.
    let stranger = app
        .submit(
            &json!({"accountId": "globex", "entityType": "contact", "actionType": "upsert",
            "data": [{"email": "secret@globex.example", "name": "Globex"}]}),
        )
        .await?;
    app.wait_projected_terminal(&stranger, WAIT).await?;

    // Sign in.
    client.goto(&app.url("/")).await?;
    let input = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("api-key"))
        .await?;
    check_labels(client, "sign-in").await?;
    screenshot(client, "sign-in.png").await?;
    input.send_keys("not-a-key").await?;
    client.find(Locator::Id("sign-in")).await?.click().await?;
    let refused = wait_until(
        client,
        "document.querySelector('.alert code')?.textContent",
        WAIT,
    )
    .await?;
    ensure!(
        refused == "unauthorized",
        "a wrong key shows its code: {refused}"
    );
    let input = client.find(Locator::Id("api-key")).await?;
    input.clear().await?;
    input.send_keys(&key).await?;
    client.find(Locator::Id("sign-in")).await?.click().await?;
    wait_until(client, "document.getElementById('actions-body')", WAIT).await?;
    let stored = eval(client, "sessionStorage.getItem('bulk.apiKey')").await?;
    ensure!(stored == key.as_str(), "the key is kept in sessionStorage");
    let local = eval(client, "localStorage.length").await?;
    ensure!(local == 0, "nothing in localStorage: {local}");

    // Submit a 20,000-row CSV.
    client.goto(&app.url("/#/submit")).await?;
    let file = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("submit-file"))
        .await?;
    check_labels(client, "submit").await?;
    let csv = csv_file(dir)?;
    file.send_keys(&csv.display().to_string()).await?;
    client
        .find(Locator::Id("submit-action"))
        .await?
        .select_by_value("upsert")
        .await?;
    // Paced to ten batches a second apart, so that the page is open while it runs.
    client
        .find(Locator::Id("submit-batch"))
        .await?
        .send_keys("2000")
        .await?;
    client
        .find(Locator::Id("submit-interval"))
        .await?
        .send_keys("1")
        .await?;
    client
        .find(Locator::Id("submit-button"))
        .await?
        .click()
        .await?;
    wait_until(client, "document.getElementById('submitted-action')", WAIT).await?;
    screenshot(client, "submit.png").await?;
    let action = eval(
        client,
        "document.getElementById('submitted-action').getAttribute('href').split('/').pop()",
    )
    .await?;
    let action = action.as_str().context("an action id")?.to_owned();
    client
        .find(Locator::Id("submitted-action"))
        .await?
        .click()
        .await?;

    // The progress bar reaches 100% from the live stream: the page is never reloaded (a
    // marker set on the window now would be gone after a reload).
    eval(client, "(window.__sameDocument = true)").await?;
    // Every value the bar shows on the way, sampled until it is full: some must lie
    // strictly between empty and full, or the page did not follow the action live.
    let mut between = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let value = eval(
            client,
            "document.getElementById('action-progress')?.value ?? null",
        )
        .await?;
        let done = eval(
            client,
            "document.getElementById('action-percent')?.textContent === '100%' && document.querySelector('#action-status .status')?.textContent === 'completed'",
        )
        .await?;
        if value
            .as_f64()
            .is_some_and(|value| value > 0.0 && value < 1.0)
        {
            between += 1;
        }
        if done == true {
            break;
        }
        ensure!(Instant::now() < deadline, "the bar did not reach 100%");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        between >= 3,
        "the bar moved without the page seeing the action run ({between} partial values)"
    );
    ensure!(
        eval(client, "window.__sameDocument === true").await? == true,
        "the page was reloaded"
    );
    let value = eval(client, "document.getElementById('action-progress').value").await?;
    ensure!(value.as_f64() == Some(1.0), "progress {value}");
    let expected_failed = ROWS.div_ceil(BAD_EVERY);
    let failed = wait_until(
        client,
        &format!("document.querySelector('#count-failed .value')?.textContent === '{expected_failed}' && document.querySelector('#count-failed .value').textContent"),
        WAIT,
    )
    .await?;
    ensure!(
        failed == expected_failed.to_string().as_str(),
        "failed {failed}"
    );
    check_labels(client, "action").await?;
    screenshot(client, "action.png").await?;

    // Filter the failed rows.
    client
        .find(Locator::Id("logs-status"))
        .await?
        .select_by_value("failed")
        .await?;
    wait_until(
        client,
        "(() => { const rows = [...document.querySelectorAll('#logs-body tr')]; return rows.length === 50 && rows.every((r) => r.children[2]?.textContent === 'failed'); })()",
        WAIT,
    )
    .await?;
    client.find(Locator::Id("logs-next")).await?.click().await?;
    wait_until(
        client,
        &format!("document.getElementById('logs-page').textContent === 'Page 2' && document.querySelectorAll('#logs-body tr').length === {}", expected_failed - 50),
        WAIT,
    )
    .await?;

    // Download the failed file: the same bytes the API serves.
    client
        .find(Locator::Id("download-failed-csv"))
        .await?
        .click()
        .await?;
    let downloaded = downloads.join(format!("{action}-failed.csv"));
    let deadline = Instant::now() + WAIT;
    while !downloaded.exists() {
        ensure!(Instant::now() < deadline, "no download in {downloads:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, served) = app
        .get_text(
            &format!("/bulk-actions/{action}/results?status=failed&format=csv"),
            &[],
        )
        .await?;
    ensure!(status == 200, "results {status}");
    let file = std::fs::read_to_string(&downloaded)?;
    ensure!(file == served, "the downloaded file is the API's");
    ensure!(
        file.lines().count() == expected_failed + 1,
        "{} lines",
        file.lines().count()
    );

    // Cancel another, running action (paced to a batch a minute).
    let running = app
        .submit(&json!({"entityType": "contact", "actionType": "upsert",
            "pacing": {"batchSize": 1, "intervalSeconds": 60},
            "data": (0..20).map(|i| json!({"email": format!("slow{i}@dash.example")})).collect::<Vec<_>>()}))
        .await?;
    app.wait_view(&running, WAIT, |view| view["status"] == "running")
        .await?;
    client
        .goto(&app.url(&format!("/#/actions/{running}")))
        .await?;
    wait_until(client, "document.getElementById('action-cancel') && !document.getElementById('action-cancel').disabled", WAIT).await?;
    client
        .find(Locator::Id("action-cancel"))
        .await?
        .click()
        .await?;
    client.accept_alert().await?;
    wait_until(
        client,
        "document.querySelector('#action-status .status')?.textContent === 'cancelled'",
        WAIT,
    )
    .await?;
    let view = app.view(&running).await?;
    ensure!(
        view["status"] == "cancelled" || view["status"] == "cancelling",
        "{view}"
    );

    // The list: this account's actions, never the other's, live and filterable.
    client.goto(&app.url("/#/actions")).await?;
    wait_until(
        client,
        &format!("document.querySelector('tr[data-action=\"{action}\"]')"),
        WAIT,
    )
    .await?;
    check_labels(client, "actions").await?;
    let source = client.source().await?;
    ensure!(
        !source.contains(&stranger),
        "another account's action is listed"
    );
    screenshot(client, "actions.png").await?;
    client
        .find(Locator::Id("filter-status"))
        .await?
        .select_by_value("cancelled")
        .await?;
    wait_until(
        client,
        &format!("location.hash.includes('status=cancelled') && document.querySelector('tr[data-action=\"{running}\"]') && !document.querySelector('tr[data-action=\"{action}\"]')"),
        WAIT,
    )
    .await?;

    // The action-type filter is the API's: no delete was submitted.
    client
        .find(Locator::Id("filter-type"))
        .await?
        .select_by_value("delete")
        .await?;
    wait_until(
        client,
        "location.hash.includes('actionType=delete') && document.getElementById('actions-body')?.textContent.includes('No action matches')",
        WAIT,
    )
    .await?;

    // Naming the other account's action shows the API's 404, nothing of it.
    client
        .goto(&app.url(&format!("/#/actions/{stranger}")))
        .await?;
    let code = wait_until(
        client,
        "document.querySelector('#action-problem .alert code')?.textContent",
        WAIT,
    )
    .await?;
    ensure!(code == "not_found", "{code}");
    ensure!(
        !client.source().await?.contains("secret@globex.example"),
        "another account's data is shown"
    );

    // A phone's width: nothing wider than the screen but the tables' own scrolling.
    client.set_window_size(390, 844).await?;
    client
        .goto(&app.url(&format!("/#/actions/{action}")))
        .await?;
    wait_until(
        client,
        "document.querySelector('#action-status .status')",
        WAIT,
    )
    .await?;
    let overflow = eval(
        client,
        "document.documentElement.scrollWidth - document.documentElement.clientWidth",
    )
    .await?;
    if overflow.as_f64() > Some(1.0) {
        let wide = eval(
            client,
            "[...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1 && !e.closest('.table-wrap')).map((e) => e.tagName + '#' + e.id + '.' + e.className).slice(0, 12)",
        )
        .await?;
        bail!("the page is {overflow}px too wide: {wide}");
    }
    screenshot(client, "action-phone.png").await?;
    Ok(())
}
