//! A real Redis Cluster for tests: three masters and three replicas of Debian's
//! `redis-server` on free loopback ports, each with its own data directory and AOF, joined
//! by `redis-cli --cluster create`. Nodes can be SIGKILLed and started again on their data.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::services::{binary, which};

const MASTERS: usize = 3;
const NODES: usize = 6;

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: TempDir,
}

struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A port whose cluster bus port (+10000) is free too.
fn free_node_port() -> Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port pair for a cluster node")
}

fn redis_cli() -> Result<PathBuf> {
    binary("REDIS_CLI_BIN", &which("redis-cli"))
}

impl RedisCluster {
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bulk-cluster-").tempdir()?;
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for index in 0..NODES {
            let node_dir = cluster.dir.path().join(format!("node-{index}"));
            std::fs::create_dir_all(&node_dir)?;
            cluster.nodes.push(Node {
                port: free_node_port()?,
                dir: node_dir,
                child: None,
            });
            cluster.start_node(index)?;
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new(redis_cli()?)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            );
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn start_node(&mut self, index: usize) -> Result<()> {
        let redis_server = binary("REDIS_SERVER_BIN", &which("redis-server"))?;
        let node = &mut self.nodes[index];
        let child = Command::new(redis_server)
            .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            // Long enough that a slow fsync on a loaded machine is not taken for a death.
            .args(["--cluster-node-timeout", "5000", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(&node.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a cluster node")?;
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
            if Instant::now() > deadline {
                bail!("cluster node on {} did not listen", node.port);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }

    /// `REDIS_URL` for the platform: every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The ports of the nodes now serving slots as masters.
    pub fn masters(&self) -> Result<Vec<u16>> {
        let mut masters = Vec::new();
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let role = self.cli(node.port, &["ROLE"])?;
            if role.lines().next() == Some("master") {
                masters.push(node.port);
            }
        }
        Ok(masters)
    }

    /// The ports of the live nodes that replicate a master.
    pub fn replicas(&self) -> Result<Vec<u16>> {
        let masters = self.masters()?;
        Ok(self
            .nodes
            .iter()
            .filter(|node| node.child.is_some() && !masters.contains(&node.port))
            .map(|node| node.port)
            .collect())
    }

    /// Whether the replica on `port` is connected to its master and in sync.
    pub fn replica_in_sync(&self, port: u16) -> Result<bool> {
        let info = self.cli(port, &["INFO", "replication"])?;
        Ok(info.contains("role:slave") && info.contains("master_link_status:up"))
    }

    /// The port of the master serving `key`'s slot: the one that answers for it instead
    /// of redirecting.
    pub fn master_of(&self, key: &str) -> Result<u16> {
        for port in self.masters()? {
            if !self.cli(port, &["TYPE", key])?.contains("MOVED") {
                return Ok(port);
            }
        }
        bail!("no master serves {key}")
    }

    /// Moves every slot the master on `from` serves to the master on `to`, with
    /// `redis-cli --cluster reshard`, keys and all, while the cluster serves.
    pub fn move_all_slots(&self, from: u16, to: u16) -> Result<()> {
        let slots = self.slots_of(from)?;
        let moved = Command::new(redis_cli()?)
            .args(["--cluster", "reshard", &format!("127.0.0.1:{to}")])
            .args([
                "--cluster-from",
                self.cli(from, &["CLUSTER", "MYID"])?.trim(),
            ])
            .args(["--cluster-to", self.cli(to, &["CLUSTER", "MYID"])?.trim()])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster reshard")?;
        if !moved.status.success() {
            bail!(
                "redis-cli --cluster reshard failed: {}",
                String::from_utf8_lossy(&moved.stdout)
            );
        }
        Ok(())
    }

    /// How many slots the master on `port` serves.
    pub fn slots_of(&self, port: u16) -> Result<usize> {
        let info = Command::new(redis_cli()?)
            .args(["--cluster", "info", &format!("127.0.0.1:{port}")])
            .output()
            .context("running redis-cli --cluster info")?;
        let info = String::from_utf8_lossy(&info.stdout);
        let line = info
            .lines()
            .find(|line| line.starts_with(&format!("127.0.0.1:{port} ")))
            .with_context(|| format!("no line for {port} in {info}"))?;
        line.split('|')
            .find_map(|part| part.trim().strip_suffix(" slots"))
            .and_then(|count| count.trim().parse().ok())
            .with_context(|| format!("no slot count in {line:?}"))
    }

    /// SIGKILLs the node on `port`; `start_node_again` brings it back on its data.
    pub fn kill_node(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|node| node.port == port) {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    pub fn start_node_again(&mut self, port: u16) -> Result<()> {
        let index = self
            .nodes
            .iter()
            .position(|node| node.port == port)
            .context("no such node")?;
        self.start_node(index)
    }

    /// Waits until every live node sees the cluster as `ok` with three masters.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let healthy = self
                .nodes
                .iter()
                .filter(|node| node.child.is_some())
                .all(|node| {
                    self.cli(node.port, &["CLUSTER", "INFO"])
                        .map(|info| info.contains("cluster_state:ok"))
                        .unwrap_or(false)
                });
            if healthy && self.masters()?.len() == MASTERS {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster was not healthy within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cli(&self, port: u16, args: &[&str]) -> Result<String> {
        let output = Command::new(redis_cli()?)
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .context("running redis-cli")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
