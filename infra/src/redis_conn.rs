//! Redis connections with explicit timeouts, to one node or to a Redis Cluster.
//!
//! `REDIS_URL` names one node (`redis://…`) or a cluster by some of its nodes
//! (`redis+cluster://[user:password@]host:port,host:port,…`; the cluster client finds the
//! rest). Both give the same connection types, so nothing above this module knows the
//! topology. TLS is not built in (the `redis` crate's TLS features are off).
//!
//! Shared, multiplexed commands go through one connection that reconnects by itself: a
//! `ConnectionManager` (capped exponential backoff) or the cluster client (which also
//! follows `MOVED` and `ASK` and refreshes its slot map). A blocking read (`XREADGROUP ...
//! BLOCK`) gets a connection of its own whose response timeout exceeds the block time,
//! because a shared connection's short timeout would cut the block short and a long block
//! would stall everyone else.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where Redis is, as `REDIS_URL` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One node's URL.
    Single(String),
    /// Seed nodes of a cluster, each as a node URL.
    Cluster(Vec<String>),
}

impl Topology {
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix("redis+cluster://") else {
            let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
            if scheme.starts_with("rediss") {
                return Err("TLS (rediss) is not supported yet".into());
            }
            if !matches!(scheme, "redis" | "redis+unix" | "unix") {
                return Err(format!(
                    "unknown scheme {scheme:?}: redis://host:port for one node, \
                     redis+cluster://host:port,host:port for a cluster"
                ));
            }
            Client::open(url).map_err(|error| error.to_string())?;
            return Ok(Topology::Single(url.to_owned()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err("a cluster URL has no database, query or fragment".into());
        }
        // Credentials once, before the first host; an '@' or ',' in them is percent-encoded.
        let (credentials, hosts) = match rest.split_once('@') {
            Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
            None => (String::new(), rest),
        };
        if hosts.contains('@') || credentials.contains(',') {
            return Err(
                "a cluster URL gives its credentials once, before the first host \
                 (redis+cluster://user:password@host:port,host:port)"
                    .into(),
            );
        }
        let mut nodes = Vec::new();
        for host in hosts.split(',').map(str::trim) {
            let port = host.rsplit_once(':').map(|(_, port)| port);
            if port.is_none_or(|port| port.parse::<u16>().is_err()) {
                return Err(format!("a cluster node is host:port, not {host:?}"));
            }
            let node = format!("redis://{credentials}{host}");
            Client::open(node.as_str()).map_err(|error| format!("{host}: {error}"))?;
            nodes.push(node);
        }
        Ok(Topology::Cluster(nodes))
    }
}

/// A connection shared by a process' tasks.
#[derive(Clone)]
pub enum Shared {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection of one blocking reader.
#[derive(Clone)]
pub enum Blocking {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

pub async fn shared(url: &str) -> RedisResult<Shared> {
    match topology(url)? {
        Topology::Single(url) => {
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(2))
                .set_number_of_retries(6);
            let client = Client::open(url)?;
            Ok(Shared::Single(
                client.get_connection_manager_with_config(config).await?,
            ))
        }
        Topology::Cluster(nodes) => Ok(Shared::Cluster(cluster(&nodes, RESPONSE_TIMEOUT).await?)),
    }
}

/// A connection for one blocking reader; `block` is the longest `BLOCK` it will send.
pub async fn blocking(url: &str, block: Duration) -> RedisResult<Blocking> {
    match topology(url)? {
        Topology::Single(url) => {
            let config = AsyncConnectionConfig::new()
                .set_response_timeout(Some(block + RESPONSE_TIMEOUT))
                .set_connection_timeout(Some(CONNECT_TIMEOUT));
            let client = Client::open(url)?;
            Ok(Blocking::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ))
        }
        Topology::Cluster(nodes) => Ok(Blocking::Cluster(
            cluster(&nodes, block + RESPONSE_TIMEOUT).await?,
        )),
    }
}

fn topology(url: &str) -> RedisResult<Topology> {
    Topology::parse(url).map_err(|reason| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "REDIS_URL", reason))
    })
}

async fn cluster(nodes: &[String], response_timeout: Duration) -> RedisResult<ClusterConnection> {
    let client = ClusterClient::builder(nodes.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response_timeout)
        .build()?;
    let config = ClusterConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(response_timeout);
    client.get_async_connection_with_config(config).await
}

macro_rules! connection_like {
    ($name:ident) => {
        impl ConnectionLike for $name {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    $name::Single(conn) => conn.req_packed_command(cmd),
                    $name::Cluster(conn) => conn.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    $name::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
                    $name::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    $name::Single(conn) => conn.get_db(),
                    $name::Cluster(conn) => conn.get_db(),
                }
            }
        }
    };
}

connection_like!(Shared);
connection_like!(Blocking);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_one_node_or_a_cluster() {
        assert_eq!(
            Topology::parse("redis://:secret@cache:6380/2"),
            Ok(Topology::Single("redis://:secret@cache:6380/2".into()))
        );
        assert_eq!(
            Topology::parse("redis+cluster://user:pw@r1:7000, r2:7001,r3:7002/"),
            Ok(Topology::Cluster(vec![
                "redis://user:pw@r1:7000".into(),
                "redis://user:pw@r2:7001".into(),
                "redis://user:pw@r3:7002".into(),
            ]))
        );
        assert_eq!(
            Topology::parse("redis+cluster://:p%40ss%2Cw%40rd@[::1]:7000"),
            Ok(Topology::Cluster(vec![
                "redis://:p%40ss%2Cw%40rd@[::1]:7000".into()
            ]))
        );
        for malformed in [
            "http://cache",
            "redis+cluster://",
            "redis+cluster://r1:7000,,r2:7001",
            "redis+cluster://r1",
            "redis+cluster://r1:",
            "redis+cluster://[::1]",
            "redis+cluster://r1:7000,r2:7001/2",
            "redis+cluster://r1:7000?protocol=resp3",
            "rediss+cluster://r1:7000",
            "rediss://cache:6380",
            "redis-cluster://r1:7000",
            "redis+cluster://:pw@r1:7000,:pw@r2:7001",
            "redis+cluster://:p@ss,w@rd@r1:7000",
        ] {
            assert!(Topology::parse(malformed).is_err(), "{malformed}");
        }
    }
}
