//! The platform as it runs in production: the real `api`, `consumer` and `projector`
//! binaries as child processes, configured through their environment, over a private set of
//! services. Fault tests kill them with SIGKILL, stop them with SIGTERM and restart them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::ApiClient;
use crate::services::Services;

/// Paths of the binaries (the three services and the `bulk` CLI), built once per test
/// binary.
struct Binaries {
    dir: PathBuf,
}

static BINARIES: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();

/// Builds the binaries (a no-op when they are fresh) so a test never runs stale ones.
/// Cargo releases its build lock before running tests, so this nested build is safe.
/// `BULK_BINARIES_DIR` names binaries built elsewhere (the benchmark's release build).
fn binaries() -> Result<&'static Binaries> {
    let built = BINARIES.get_or_init(|| {
        if let Some(dir) = std::env::var_os("BULK_BINARIES_DIR") {
            return Ok(Binaries {
                dir: PathBuf::from(dir),
            });
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .ok_or("no workspace directory")?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        // `cargo test` hands its test processes variables (CARGO_PKG_*, CARGO_MANIFEST_DIR,
        // ...) that would make this nested build look dirty and rebuild everything.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR" {
                build.env_remove(name.as_ref());
            }
        }
        build.current_dir(&workspace).args([
            "build",
            "--bins",
            "-p",
            "api",
            "-p",
            "consumer",
            "-p",
            "projector",
            "-p",
            "cli",
        ]);
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            build.arg("--locked");
        }
        let status = build.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build of the binaries failed: {status}"));
        }
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace.join("target"));
        Ok(Binaries {
            dir: target.join("debug"),
        })
    });
    built.as_ref().map_err(|error| anyhow::anyhow!("{error}"))
}

/// A workspace binary (`api`, `consumer`, `projector`, `bulk`), built fresh first.
pub fn built_binary(name: &str) -> Result<PathBuf> {
    Ok(binaries()?.dir.join(name))
}

/// Knobs of a deployment under test: short timeouts so faults heal in seconds.
#[derive(Debug, Clone)]
pub struct DeploymentOptions {
    pub batch_size: u32,
    pub consumer_concurrency: usize,
    pub claim_idle_ms: u64,
    pub max_batch_attempts: u32,
    pub shutdown_grace_ms: u64,
    pub records_per_minute: u32,
    pub requests_per_minute: u32,
    /// Further settings for every process, e.g. `("ADMIN_TOKEN", "...")`.
    pub env: Vec<(&'static str, String)>,
    /// Give every process a `METRICS_PORT` of its own (`Deployment::metrics_url`).
    pub metrics: bool,
}

impl Default for DeploymentOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            consumer_concurrency: 2,
            claim_idle_ms: 2_000,
            max_batch_attempts: 8,
            shutdown_grace_ms: 3_000,
            records_per_minute: 100_000_000,
            requests_per_minute: 1_000_000,
            env: Vec::new(),
            metrics: false,
        }
    }
}

pub struct Deployment {
    pub services: Services,
    /// The Redis Cluster the processes use instead of the services' Redis, when
    /// `BULK_TEST_REDIS=cluster`.
    pub cluster: Option<crate::RedisCluster>,
    pub client: ApiClient,
    options: DeploymentOptions,
    api_port: u16,
    api: Option<Child>,
    /// More api instances, each on its own port (kept across restarts), sharing Redis and
    /// MongoDB.
    other_apis: Vec<(u16, Option<Child>)>,
    consumers: BTreeMap<String, Child>,
    projector: Option<Child>,
    starts: u32,
    /// Metrics port by role (`api`, `projector`, `consumer <name>`), kept across restarts.
    metrics_ports: BTreeMap<String, u16>,
}

impl Deployment {
    /// Services, one api, the named consumers and one projector, all ready.
    pub async fn start(options: DeploymentOptions, consumers: &[&str]) -> Result<Self> {
        let binaries_ready = tokio::task::spawn_blocking(|| binaries().map(|_| ()));
        let services = tokio::task::spawn_blocking(Services::start).await??;
        binaries_ready.await??;
        Self::start_with(services, options, consumers).await
    }

    /// The same over services started (and perhaps filled) by the caller.
    pub async fn start_with(
        services: Services,
        options: DeploymentOptions,
        consumers: &[&str],
    ) -> Result<Self> {
        tokio::task::spawn_blocking(|| binaries().map(|_| ())).await??;
        let cluster = if crate::on_cluster() {
            Some(tokio::task::spawn_blocking(crate::RedisCluster::start).await??)
        } else {
            None
        };
        let api_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let database = infra::mongo::connect(&services.mongodb_uri, "bulk-fault-tests").await?;
        let admin_token = options
            .env
            .iter()
            .find(|(name, _)| *name == "ADMIN_TOKEN")
            .map_or(crate::client::TEST_ADMIN_TOKEN, |(_, value)| value.as_str())
            .to_owned();
        let client = ApiClient::new(format!("http://127.0.0.1:{api_port}"), database)
            .with_admin(&admin_token);
        let mut deployment = Deployment {
            services,
            cluster,
            client,
            options,
            api_port,
            api: None,
            other_apis: Vec::new(),
            consumers: BTreeMap::new(),
            projector: None,
            starts: 0,
            metrics_ports: BTreeMap::new(),
        };
        deployment.start_projector()?;
        for name in consumers {
            deployment.start_consumer(name)?;
        }
        deployment.start_api()?;
        deployment.wait_ready(Duration::from_secs(60)).await?;
        Ok(deployment)
    }

    fn command(&mut self, binary: &str) -> Result<Command> {
        self.wrapped_command(binary, &[])
    }

    /// `command` with the role's `METRICS_PORT` when the deployment has metrics.
    fn command_of(&mut self, binary: &str, role: &str, wrapper: &[&str]) -> Result<Command> {
        let mut command = self.wrapped_command(binary, wrapper)?;
        if self.options.metrics {
            let port = match self.metrics_ports.get(role) {
                Some(port) => *port,
                None => {
                    let port = std::net::TcpListener::bind("127.0.0.1:0")?
                        .local_addr()?
                        .port();
                    self.metrics_ports.insert(role.to_owned(), port);
                    port
                }
            };
            command.env("METRICS_PORT", port.to_string());
        }
        Ok(command)
    }

    /// `http://…/metrics` of a role (`api`, `projector`, `consumer <name>`) when the
    /// deployment has metrics.
    pub fn metrics_url(&self, role: &str) -> Option<String> {
        self.metrics_ports
            .get(role)
            .map(|port| format!("http://127.0.0.1:{port}/metrics"))
    }

    /// The process' command, run through `wrapper` (e.g. `faketime -f +10s`) if given.
    fn wrapped_command(&mut self, binary: &str, wrapper: &[&str]) -> Result<Command> {
        let path = binaries()?.dir.join(binary);
        self.starts += 1;
        let log = self
            .services
            .dir()
            .join(format!("{binary}-{}.log", self.starts));
        let log = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(path);
                command
            }
            None => Command::new(path),
        };
        // Its own process group, so that a SIGKILL reaches a wrapper's child too (faketime
        // runs the consumer as its child, which would outlive it).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let options = &self.options;
        command
            // Away from the repository, so no developer's `.env` leaks in.
            .current_dir(self.services.dir())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,consumer=debug")
            .env("MONGODB_URI", &self.services.mongodb_uri)
            .env("REDIS_URL", self.redis_url())
            .env("REDIS_KEY_PREFIX", "test")
            .env("STREAM_PARTITIONS", self.partitions().to_string())
            .env("HOST", "127.0.0.1")
            .env("PORT", self.api_port.to_string())
            .env("BATCH_SIZE", options.batch_size.to_string())
            .env(
                "CONSUMER_CONCURRENCY",
                options.consumer_concurrency.to_string(),
            )
            .env("CONSUMER_BLOCK_MS", "200")
            .env("PROJECTOR_BLOCK_MS", "200")
            .env("CLAIM_IDLE_MS", options.claim_idle_ms.to_string())
            .env("MAX_BATCH_ATTEMPTS", options.max_batch_attempts.to_string())
            .env("RETRY_FIRST_DELAY_MS", "50")
            .env("RETRY_MAX_DELAY_MS", "500")
            .env("SCHEDULER_TICK_MS", "50")
            .env("SHUTDOWN_GRACE_MS", options.shutdown_grace_ms.to_string())
            .env(
                "RATE_LIMIT_RECORDS_PER_MINUTE",
                options.records_per_minute.to_string(),
            )
            .env(
                "RATE_LIMIT_REQUESTS_PER_MINUTE",
                options.requests_per_minute.to_string(),
            )
            .env("ADMIN_TOKEN", crate::client::TEST_ADMIN_TOKEN)
            .envs(options.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(command)
    }

    /// The Redis every process uses: the services' own, or the cluster.
    pub fn redis_url(&self) -> String {
        match &self.cluster {
            Some(cluster) => cluster.url(),
            None => self.services.redis_url.clone(),
        }
    }

    /// Six on a cluster, so that partitions land on each of its three masters.
    pub fn partitions(&self) -> u32 {
        if self.cluster.is_some() {
            6
        } else {
            4
        }
    }

    /// The key layout the processes use.
    pub fn keys(&self) -> infra::Keys {
        infra::Keys::new("test", self.partitions())
    }

    pub fn start_api(&mut self) -> Result<()> {
        let child = self
            .command_of("api", "api", &[])?
            .spawn()
            .context("starting api")?;
        self.api = Some(child);
        Ok(())
    }

    /// Starts one more api instance on a free port and returns a client of it.
    pub async fn start_another_api(&mut self) -> Result<ApiClient> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        self.other_apis.push((port, None));
        self.restart_another_api(self.other_apis.len() - 1)?;
        let client = self.client.at(format!("http://127.0.0.1:{port}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(client.get_json("/readyz").await, Ok((200, _))) {
            if Instant::now() > deadline {
                anyhow::bail!("the second api did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(client)
    }

    pub fn kill_api(&mut self) {
        sigkill(self.api.take());
    }

    /// SIGKILLs the `index`th instance started by `start_another_api`.
    pub fn kill_another_api(&mut self, index: usize) {
        if let Some((_, child)) = self.other_apis.get_mut(index) {
            sigkill(child.take());
        }
    }

    /// Starts the `index`th other api instance again on its port (SIGKILLs it if running).
    pub fn restart_another_api(&mut self, index: usize) -> Result<()> {
        let port = self
            .other_apis
            .get(index)
            .map(|(port, _)| *port)
            .with_context(|| format!("no other api {index}"))?;
        let child = self
            .command("api")?
            .env("PORT", port.to_string())
            .spawn()
            .context("starting another api")?;
        if let Some((_, old)) = self.other_apis.get_mut(index) {
            sigkill(old.replace(child));
        }
        Ok(())
    }

    /// Starts a consumer; reusing a killed one's name makes it find its own pending work.
    pub fn start_consumer(&mut self, name: &str) -> Result<()> {
        let child = self
            .command_of("consumer", &format!("consumer {name}"), &[])?
            .env("CONSUMER_NAME", name)
            .spawn()
            .context("starting consumer")?;
        if let Some(old) = self.consumers.insert(name.to_owned(), child) {
            sigkill(Some(old));
        }
        Ok(())
    }

    /// Starts a consumer through `wrapper`, e.g. `["faketime", "-f", "+10s"]`.
    pub fn start_consumer_wrapped(&mut self, name: &str, wrapper: &[&str]) -> Result<()> {
        let child = self
            .command_of("consumer", &format!("consumer {name}"), wrapper)?
            .env("CONSUMER_NAME", name)
            .spawn()
            .with_context(|| format!("starting consumer {name} through {wrapper:?}"))?;
        if let Some(old) = self.consumers.insert(name.to_owned(), child) {
            sigkill(Some(old));
        }
        Ok(())
    }

    /// The PostgreSQL table under FerretDB's `contacts` collection, once the consumers have
    /// created it (on a busy machine that can come after the api is ready).
    pub async fn contacts_table(&self) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let table = self.services.psql(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
                 WHERE tablename LIKE 'contacts%' LIMIT 1",
            )?;
            if !table.is_empty() {
                return Ok(table);
            }
            if Instant::now() > deadline {
                bail!("FerretDB has no contacts table after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn kill_consumer(&mut self, name: &str) {
        sigkill(self.consumers.remove(name));
    }

    /// Stops a consumer in its tracks (SIGSTOP) until `thaw_consumer`.
    pub fn freeze_consumer(&self, name: &str) -> Result<()> {
        self.signal_consumer(name, "-STOP")
    }

    pub fn thaw_consumer(&self, name: &str) -> Result<()> {
        self.signal_consumer(name, "-CONT")
    }

    fn signal_consumer(&self, name: &str, signal: &str) -> Result<()> {
        let child = self
            .consumers
            .get(name)
            .with_context(|| format!("no consumer {name}"))?;
        let group = format!("-{}", child.id());
        let status = Command::new("kill").args([signal, "--", &group]).status()?;
        if !status.success() {
            bail!("kill {signal} -- {group} failed");
        }
        Ok(())
    }

    /// SIGTERMs a consumer and waits for it to exit; returns how long that took.
    pub async fn terminate_consumer(&mut self, name: &str, timeout: Duration) -> Result<Duration> {
        let child = self
            .consumers
            .remove(name)
            .with_context(|| format!("no consumer {name}"))?;
        let (took, status) = terminate(child, timeout).await?;
        if !status.success() {
            bail!("consumer {name} exited with {status} after SIGTERM");
        }
        Ok(took)
    }

    /// SIGTERMs the api and waits for it to exit.
    pub async fn terminate_api(&mut self, timeout: Duration) -> Result<Duration> {
        let child = self.api.take().context("no api running")?;
        let (took, status) = terminate(child, timeout).await?;
        if !status.success() {
            bail!("api exited with {status} after SIGTERM");
        }
        Ok(took)
    }

    pub fn start_projector(&mut self) -> Result<()> {
        let child = self
            .command_of("projector", "projector", &[])?
            .env("PROJECTOR_NAME", "fault-projector")
            .arg("run")
            .spawn()
            .context("starting projector")?;
        self.projector = Some(child);
        Ok(())
    }

    pub fn kill_projector(&mut self) {
        sigkill(self.projector.take());
    }

    /// Runs `projector replay` to completion (the live projector should be stopped).
    pub async fn replay(&mut self) -> Result<()> {
        let mut command = self.command("projector")?;
        let status = tokio::task::spawn_blocking(move || command.arg("replay").status()).await??;
        if !status.success() {
            bail!("projector replay failed: {status}");
        }
        Ok(())
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.client.get_json("/readyz").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("api not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident memory (`VmHWM`, KiB) of every running process, by role.
    pub fn peak_rss_kib(&self) -> Vec<(String, u64)> {
        let mut peaks = Vec::new();
        let mut read = |role: String, child: Option<&Child>| {
            if let Some(kib) = child.and_then(|child| peak_rss_of(child.id())) {
                peaks.push((role, kib));
            }
        };
        read("api".into(), self.api.as_ref());
        for (name, child) in &self.consumers {
            read(format!("consumer {name}"), Some(child));
        }
        read("projector".into(), self.projector.as_ref());
        peaks
    }

    /// Where the processes' logs are, for a failing test's message.
    pub fn logs_dir(&self) -> &Path {
        self.services.dir()
    }
}

impl std::ops::Deref for Deployment {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        sigkill(self.api.take());
        for (_, child) in std::mem::take(&mut self.other_apis) {
            sigkill(child);
        }
        sigkill(self.projector.take());
        for (_, child) in std::mem::take(&mut self.consumers) {
            sigkill(Some(child));
        }
    }
}

fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn sigkill(child: Option<Child>) {
    if let Some(mut child) = child {
        // SIGKILL: no chance to clean up, like a crash. To the whole process group (the
        // child leads its own), so a wrapped process goes with its wrapper.
        let group = format!("-{}", child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }
}

async fn terminate(mut child: Child, timeout: Duration) -> Result<(Duration, ExitStatus)> {
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -TERM failed");
    }
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((sent.elapsed(), status));
        }
        if sent.elapsed() > timeout {
            sigkill(Some(child));
            bail!("did not exit within {timeout:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
