use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

/// One private set of Redis, PostgreSQL and FerretDB processes.
pub struct Services {
    pub redis_url: String,
    pub mongodb_uri: String,
    pub redis_port: u16,
    pg_bin: PathBuf,
    pg_port: u16,
    pg_socket_dir: PathBuf,
    ferretdb_port: u16,
    redis: Option<Child>,
    postgres: Option<Child>,
    ferretdb: Option<Child>,
    dir: TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, what: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{what} did not listen on port {port} within {timeout:?}")
}

/// A tool's path: `env` if set, else the first of `fallbacks` that exists.
pub fn binary(env: &str, fallbacks: &[PathBuf]) -> Result<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Ok(PathBuf::from(path));
    }
    fallbacks
        .iter()
        .find(|path| path.exists())
        .cloned()
        .with_context(|| format!("set {env} or run scripts/deps.sh (looked in {fallbacks:?})"))
}

/// `name` in every directory of `PATH`.
pub fn which(name: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default()
}

fn postgres_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL not found: run scripts/deps.sh or set PG_BIN_DIR")?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL version with initdb found")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root; as root, run it as the `postgres` user. `setpriv`
/// execs (no fork), so killing the child kills PostgreSQL itself.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--clear-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// What a new redis-server starts with.
enum RedisData {
    /// The AOF in its data directory, or nothing.
    Own,
    /// An RDB file, e.g. one written by an earlier build of the platform.
    Dump(PathBuf),
}

impl Services {
    pub fn start() -> Result<Self> {
        Self::start_with(RedisData::Own)
    }

    /// Services whose Redis starts with the data saved in `dump` (an RDB file).
    pub fn start_from_redis_dump(dump: &Path) -> Result<Self> {
        Self::start_with(RedisData::Dump(dump.to_owned()))
    }

    fn start_with(redis_data: RedisData) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bulk-test-").tempdir()?;
        let mut services = Services {
            redis_url: String::new(),
            mongodb_uri: String::new(),
            redis_port: 0,
            pg_bin: PathBuf::new(),
            pg_port: 0,
            pg_socket_dir: PathBuf::new(),
            ferretdb_port: 0,
            redis: None,
            postgres: None,
            ferretdb: None,
            dir,
        };
        services.start_redis(free_port()?, redis_data)?;
        services.start_postgres_and_ferretdb()?;
        Ok(services)
    }

    /// Writes Redis' data to `path` as an RDB file.
    pub fn save_redis_dump(&self, path: &Path) -> Result<()> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = client.get_connection()?;
        redis::cmd("SAVE").query::<()>(&mut conn)?;
        std::fs::copy(self.dir.path().join("redis").join("dump.rdb"), path)
            .with_context(|| format!("copying the RDB file to {}", path.display()))?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn start_redis(&mut self, port: u16, redis_data: RedisData) -> Result<()> {
        let redis_server = binary("REDIS_SERVER_BIN", &which("redis-server"))?;
        let data = self.dir.path().join("redis");
        std::fs::create_dir_all(&data)?;
        // With the AOF on, redis-server ignores an RDB file: load the dump without it, then
        // turn it on, which rewrites the AOF from the loaded data.
        let appendonly = match &redis_data {
            RedisData::Own => "yes",
            RedisData::Dump(dump) => {
                std::fs::copy(dump, data.join("dump.rdb"))
                    .with_context(|| format!("copying {}", dump.display()))?;
                "no"
            }
        };
        let child = Command::new(redis_server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", appendonly, "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.redis = Some(child);
        wait_for_port(port, "redis-server", Duration::from_secs(10))?;
        self.redis_port = port;
        self.redis_url = format!("redis://127.0.0.1:{port}");
        if let RedisData::Dump(_) = redis_data {
            self.turn_the_aof_on()?;
        }
        Ok(())
    }

    fn turn_the_aof_on(&self) -> Result<()> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = client.get_connection()?;
        redis::cmd("CONFIG")
            .arg(&["SET", "appendonly", "yes"])
            .query::<()>(&mut conn)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info: String = redis::cmd("INFO").arg("persistence").query(&mut conn)?;
            let done = info.contains("aof_enabled:1") && info.contains("aof_rewrite_in_progress:0");
            if done && info.contains("aof_rewrite_scheduled:0") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis-server did not write its AOF within 30 s");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn start_postgres_and_ferretdb(&mut self) -> Result<()> {
        let pg_bin = postgres_bin_dir()?;
        let pg_dir = self.dir.path().join("postgres");
        std::fs::create_dir_all(&pg_dir)?;
        if is_root() {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(self.dir.path())
                .status()?;
            if !status.success() {
                bail!("chown postgres failed");
            }
        }
        let data = pg_dir.join("data");
        let initdb = as_postgres(&pg_bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running initdb")?;
        if !initdb.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
        }
        let pg_port = free_port()?;
        let postgres = as_postgres(&pg_bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &pg_port.to_string(), "-k"])
            .arg(&pg_dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=500"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;
        self.postgres = Some(postgres);
        wait_for_port(pg_port, "postgres", Duration::from_secs(20))?;
        self.pg_bin = pg_bin;
        self.pg_port = pg_port;
        self.pg_socket_dir = pg_dir;
        self.start_ferretdb(free_port()?)
    }

    fn start_ferretdb(&mut self, port: u16) -> Result<()> {
        let pg_port = self.pg_port;
        let ferretdb_bin = binary(
            "FERRETDB_BIN",
            &[which("ferretdb"), vec![go_bin().join("ferretdb")]].concat(),
        )?;
        let ferretdb = Command::new(ferretdb_bin)
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg("--handler=postgresql")
            // FerretDB holds a backend connection per statement of a command: give it room.
            .arg(format!("--postgresql-url=postgres://postgres@127.0.0.1:{pg_port}/postgres?pool_max_conns=400"))
            .args(["--debug-addr=-", "--telemetry=disable", "--log-level=error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ferretdb")?;
        self.ferretdb = Some(ferretdb);
        wait_for_port(port, "ferretdb", Duration::from_secs(20))?;
        self.ferretdb_port = port;
        self.mongodb_uri = format!("mongodb://127.0.0.1:{port}/crm-bulk-actions");
        Ok(())
    }

    /// SIGKILLs redis-server and starts it again on the same port and data (AOF).
    pub fn restart_redis(&mut self) -> Result<()> {
        self.kill_redis();
        self.start_redis(self.redis_port, RedisData::Own)
    }

    /// SIGKILLs redis-server; `start_redis_again` brings it back on the same data.
    pub fn kill_redis(&mut self) {
        kill(&mut self.redis);
    }

    pub fn start_redis_again(&mut self) -> Result<()> {
        self.start_redis(self.redis_port, RedisData::Own)
    }

    /// SIGKILLs the MongoDB-compatible server (its PostgreSQL keeps the data).
    pub fn kill_mongodb(&mut self) {
        kill(&mut self.ferretdb);
    }

    pub fn start_mongodb_again(&mut self) -> Result<()> {
        self.start_ferretdb(self.ferretdb_port)
    }

    /// Stops the MongoDB-compatible server in its tracks (SIGSTOP): every request to it
    /// hangs until `thaw_mongodb`, without an error.
    pub fn freeze_mongodb(&self) -> Result<()> {
        self.signal_mongodb("-STOP")
    }

    pub fn thaw_mongodb(&self) -> Result<()> {
        self.signal_mongodb("-CONT")
    }

    fn signal_mongodb(&self, signal: &str) -> Result<()> {
        let pid = self
            .ferretdb
            .as_ref()
            .context("ferretdb is not running")?
            .id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// Runs SQL against FerretDB's own PostgreSQL, e.g. to make the store itself fail.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let output = as_postgres(&self.pg_bin.join("psql"))
            .arg("-h")
            .arg(&self.pg_socket_dir)
            .args([
                "-p",
                &self.pg_port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-A", "-t", "-c", sql])
            .output()
            .context("running psql")?;
        if !output.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn go_bin() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(std::env::var("GOPATH").unwrap_or_else(|_| format!("{home}/go"))).join("bin")
}

impl Drop for Services {
    fn drop(&mut self) {
        for child in [&mut self.ferretdb, &mut self.postgres, &mut self.redis]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("KEEP_TEST_DIRS").is_some() {
            let dir = std::mem::replace(&mut self.dir, TempDir::new().expect("a temp dir"));
            eprintln!("kept {}", dir.keep().display());
        }
    }
}
