//! The `bulk` CLI (issue 17), run as the real binary against a test deployment: a
//! 50,000-row CSV end to end, the exit codes scripts switch on, `--json` parsed, result
//! files byte-equal to the API's, and Ctrl-C leaving the action running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bulk_tests::{built_binary, AppOptions, TestApp};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest any one `bulk` run may take; the 50,000-row action is the slowest.
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// A well-formed id no action has.
const UNKNOWN_ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

struct Bulk {
    binary: PathBuf,
    url: String,
    key: String,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The `--json` document: the last line of stdout.
    fn json(&self) -> Result<Value> {
        let line = self
            .stdout
            .lines()
            .last()
            .with_context(|| format!("no stdout: {self:?}"))?;
        serde_json::from_str(line).with_context(|| format!("stdout is not JSON: {self:?}"))
    }

    fn expect(self, code: i32) -> Result<Self> {
        ensure!(self.code == Some(code), "expected exit {code}: {self:?}");
        Ok(self)
    }
}

impl Bulk {
    async fn new(app: &TestApp) -> Result<Self> {
        let binary = tokio::task::spawn_blocking(|| built_binary("bulk")).await??;
        Ok(Self {
            binary,
            url: app.client.base_url.clone(),
            key: app.client.key_for("acme").await?,
            dir: tempfile::tempdir()?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("BULK_API_URL", &self.url)
            .env("BULK_API_KEY", &self.key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Result<Run> {
        finish(self.command(args).spawn()?).await
    }
}

async fn finish(child: Child) -> Result<Run> {
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .context("bulk ran too long")??;
    Ok(Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// A child whose stderr is collected as it comes, for tests that act on what it says.
struct Watched {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Watched {
    fn spawn(mut command: Command) -> Result<Self> {
        let mut child = command.spawn()?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().context("stderr")?;
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        Ok(Self { child, stderr })
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn until_stderr(&self, needle: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.stderr().contains(needle) {
            if tokio::time::Instant::now() > deadline {
                bail!("no {needle:?} on stderr: {}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<Run> {
        let status = tokio::time::timeout(RUN_LIMIT, self.child.wait())
            .await
            .context("bulk ran too long")??;
        let mut stdout = String::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            pipe.read_to_string(&mut stdout).await?;
        }
        // The reader task ends with the pipe; give it a moment to take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(Run {
            code: status.code(),
            stdout,
            stderr: self.stderr(),
        })
    }
}

fn write_csv(path: &Path, rows: usize, invalid_every: usize) -> Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(file, "email,name,age")?;
    for i in 0..rows {
        if invalid_every > 0 && i % invalid_every == 7 {
            writeln!(file, "not-an-email-{i},Broken {i},{}", i % 100)?;
        } else {
            writeln!(file, "user{i}@cli.example,User {i},{}", i % 100)?;
        }
    }
    file.flush()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50000_row_csv_end_to_end() -> Result<()> {
    let app = TestApp::spawn(AppOptions {
        batch_size: 1_000,
        consumers: 2,
        ..AppOptions::default()
    })
    .await?;
    let bulk = Bulk::new(&app).await?;
    write_csv(&bulk.path("contacts.csv"), 50_000, 5_000)?;

    // Ten invalid emails, allowed: success. Progress goes to stderr as plain lines (not a
    // terminal), the statistics to stdout.
    let run = bulk
        .run(&[
            "submit",
            "contacts.csv",
            "--action",
            "upsert",
            "--wait",
            "--max-failures",
            "10",
            "--json",
        ])
        .await?
        .expect(0)?;
    let stats = run.json()?;
    let id = stats["actionId"].as_str().context("actionId")?.to_owned();
    ensure!(stats["status"] == "completed", "{stats}");
    ensure!(
        stats["total"] == 50_000 && stats["succeeded"] == 49_990,
        "{stats}"
    );
    ensure!(stats["failed"] == 10, "{stats}");
    ensure!(stats["byReason"]["invalid_email"] == 10, "{stats}");
    ensure!(run.stderr.contains("uploading contacts.csv"), "{run:?}");
    ensure!(
        run.stderr.contains(&format!("action {id} accepted")),
        "{run:?}"
    );
    ensure!(
        !run.stderr.contains('\u{1b}'),
        "escape codes off a terminal: {run:?}"
    );
    ensure!(
        app.contacts()
            .count_documents(mongodb::bson::doc! {})
            .await?
            == 49_990
    );

    // The same action watched again: the allowance decides the exit code.
    let run = bulk.run(&["watch", &id, "--json"]).await?.expect(1)?;
    ensure!(run.json()?["failed"] == 10, "{run:?}");
    ensure!(run.stderr.contains("10 records failed"), "{run:?}");
    bulk.run(&["watch", &id, "--max-failures", "10"])
        .await?
        .expect(0)?;

    // Result files: byte for byte what the API answers, to a file and to stdout.
    let run = bulk
        .run(&[
            "results",
            &id,
            "--status",
            "failed",
            "-o",
            "failed.csv",
            "--json",
        ])
        .await?
        .expect(0)?;
    let written = std::fs::read(bulk.path("failed.csv"))?;
    let (status, _, api_csv) = app
        .get_text(
            &format!("/bulk-actions/{id}/results?status=failed&format=csv"),
            &[],
        )
        .await?;
    ensure!(status == 200);
    ensure!(
        written == api_csv.as_bytes(),
        "the file differs from the API's answer"
    );
    ensure!(api_csv.lines().count() == 11, "{api_csv}");
    ensure!(run.json()?["bytes"] == written.len(), "{run:?}");
    let run = bulk
        .run(&["results", &id, "--format", "ndjson"])
        .await?
        .expect(0)?;
    let (_, _, api_ndjson) = app
        .get_text(
            &format!("/bulk-actions/{id}/results?status=failed&format=ndjson"),
            &[],
        )
        .await?;
    ensure!(run.stdout == api_ndjson, "{run:?}");

    // Status and list, parsed.
    let view = bulk
        .run(&["status", &id, "--json"])
        .await?
        .expect(0)?
        .json()?;
    ensure!(
        view["status"] == "completed" && view["totalRecords"] == 50_000,
        "{view}"
    );
    let page = bulk.run(&["list", "--json"]).await?.expect(0)?.json()?;
    let items = page["items"].as_array().context("items")?;
    ensure!(
        items.iter().any(|item| item["actionId"] == id.as_str()),
        "{page}"
    );

    // A retry of what failed, followed to its end: the emails are still invalid.
    let retry = bulk
        .run(&["retry", &id, "--json"])
        .await?
        .expect(0)?
        .json()?;
    ensure!(
        retry["retryOf"] == id.as_str() && retry["totalRecords"] == 10,
        "{retry}"
    );
    let retry_id = retry["actionId"].as_str().context("retry id")?;
    let run = bulk.run(&["watch", retry_id, "--json"]).await?.expect(1)?;
    ensure!(run.json()?["failed"] == 10, "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_how_a_command_ended() -> Result<()> {
    // Event streams end every second, as they do after `SSE_MAX_STREAM_SECONDS`: every
    // follow below resumes with `Last-Event-ID` several times and must miss nothing.
    let app = TestApp::spawn(AppOptions {
        max_stream_seconds: 1,
        ..AppOptions::default()
    })
    .await?;
    let bulk = Bulk::new(&app).await?;

    // 2: API errors, with the API's code and message.
    let mut bad_key = bulk.command(&["status", UNKNOWN_ID, "--json"]);
    bad_key.env("BULK_API_KEY", "bk_not_a_key");
    let run = finish(bad_key.spawn()?).await?.expect(2)?;
    ensure!(run.json()?["error"]["code"] == "unauthorized", "{run:?}");
    ensure!(run.stderr.contains("unauthorized"), "{run:?}");
    let run = bulk.run(&["status", UNKNOWN_ID]).await?.expect(2)?;
    ensure!(run.stderr.contains("error: not_found"), "{run:?}");
    ensure!(run.stdout.is_empty(), "{run:?}");
    // 2: usage.
    let mut no_key = bulk.command(&["list"]);
    no_key.env_remove("BULK_API_KEY");
    let run = finish(no_key.spawn()?).await?.expect(2)?;
    ensure!(run.stderr.contains("BULK_API_KEY"), "{run:?}");
    std::fs::write(bulk.path("records.txt"), "email\n")?;
    bulk.run(&["submit", "records.txt", "--action", "upsert"])
        .await?
        .expect(2)?;
    bulk.run(&["submit", "records.txt", "--action", "merge"])
        .await?
        .expect(2)?;
    bulk.run(&["status", "../admin"]).await?.expect(2)?;
    // 2: the API refuses the upload itself.
    std::fs::write(
        bulk.path("odd.csv"),
        "email,shoe_size\nann@cli.example,44\n",
    )?;
    let run = bulk
        .run(&["submit", "odd.csv", "--action", "upsert", "--json"])
        .await?
        .expect(2)?;
    ensure!(
        run.json()?["error"]["code"] == "invalid_csv_header",
        "{run:?}"
    );
    ensure!(
        run.stderr.contains("error: invalid_csv_header: "),
        "{run:?}"
    );

    // 0: a JSON array of records, streamed inside the submission's body.
    std::fs::write(
        bulk.path("ann.json"),
        r#"[{"email": "ann@cli.example", "name": "Ann"}, {"email": "bob@cli.example"}]"#,
    )?;
    let stats = bulk
        .run(&[
            "submit", "ann.json", "--action", "upsert", "--wait", "--json",
        ])
        .await?
        .expect(0)?
        .json()?;
    ensure!(stats["succeeded"] == 2, "{stats}");

    // 1: failed records beyond the default allowance of none.
    std::fs::write(
        bulk.path("update.csv"),
        "email,name\nann@cli.example,Ann B\nnobody@cli.example,X\n",
    )?;
    let run = bulk
        .run(&[
            "submit",
            "update.csv",
            "--action",
            "update",
            "--wait",
            "--json",
        ])
        .await?
        .expect(1)?;
    let stats = run.json()?;
    ensure!(
        stats["failed"] == 1 && stats["byReason"]["not_found"] == 1,
        "{stats}"
    );

    // 3: cancelled while a watcher follows it; pause and resume on the way.
    write_csv(&bulk.path("slow.csv"), 40, 0)?;
    let view = bulk
        .run(&[
            "submit", "slow.csv", "--action", "upsert", "--pace", "2/5", "--json",
        ])
        .await?
        .expect(0)?
        .json()?;
    ensure!(
        view["pacing"]["batchSize"] == 2 && view["pacing"]["intervalSeconds"] == 5,
        "--pace maps to the API's pacing: {view}"
    );
    let id = view["actionId"].as_str().context("actionId")?.to_owned();
    let watcher = Watched::spawn(bulk.command(&["watch", &id, "--json"]))?;
    watcher.until_stderr(&format!("action {id}:")).await?;
    let paused = bulk
        .run(&["pause", &id, "--json"])
        .await?
        .expect(0)?
        .json()?;
    ensure!(paused["status"] == "paused", "{paused}");
    watcher
        .until_stderr(&format!("action {id}: paused"))
        .await?;
    let resumed = bulk
        .run(&["resume", &id, "--json"])
        .await?
        .expect(0)?
        .json()?;
    ensure!(resumed["status"] != "paused", "{resumed}");
    // Past two ends of the watcher's stream before the cancel it must still see.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    bulk.run(&["cancel", &id, "--json"]).await?.expect(0)?;
    let run = watcher.finish().await?.expect(3)?;
    ensure!(run.json()?["status"] == "cancelled", "{run:?}");
    ensure!(
        !run.stderr.contains("reconnecting"),
        "a resume counted as a failure: {run:?}"
    );
    let unprocessed = bulk
        .run(&["results", &id, "--status", "unprocessed"])
        .await?
        .expect(0)?;
    ensure!(unprocessed.stdout.lines().count() > 1, "{unprocessed:?}");

    // Ctrl-C while waiting: the CLI stops following, the action goes on.
    let waiting = Watched::spawn(bulk.command(&[
        "submit", "slow.csv", "--action", "upsert", "--pace", "1/60", "--wait", "--json",
    ]))?;
    waiting.until_stderr("accepted").await?;
    let stderr = waiting.stderr();
    let id = stderr
        .split("action ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("the accepted action's id")?
        .to_owned();
    waiting.until_stderr(&format!("action {id}:")).await?;
    let pid = waiting.child.id().context("pid")?;
    let killed = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .await?;
    ensure!(killed.success());
    let run = waiting.finish().await?.expect(130)?;
    ensure!(run.stderr.contains(&format!("bulk watch {id}")), "{run:?}");
    ensure!(run.json()?["interrupted"] == true, "{run:?}");
    let view = app.view(&id).await?;
    ensure!(
        ["queued", "running"].contains(&view["status"].as_str().unwrap_or_default()),
        "the action must go on: {view}"
    );
    Ok(())
}
