//! Settings every binary shares. Each binary flattens `StoreConfig` into its own clap
//! arguments, so every setting is a flag and an environment variable, and a `.env` file in
//! the working directory is read first.

use clap::Args;

pub const DEFAULT_DATABASE: &str = "crm-bulk-actions";

#[derive(Debug, Clone, Args)]
pub struct StoreConfig {
    /// MongoDB connection string; the database is the URI's path.
    #[arg(
        long,
        env = "MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017/crm-bulk-actions",
        value_parser = mongodb_uri
    )]
    pub mongodb_uri: String,

    /// Redis: one node's URL, or `redis+cluster://host:port,host:port,…` for a cluster.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", value_parser = redis_url)]
    pub redis_url: String,

    /// Prefix of every Redis key, so that deployments can share one Redis.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "bulk")]
    pub redis_key_prefix: String,

    /// Number of stream partitions (hash-tagged key groups). Fixed for the life of a
    /// deployment's data: see docs/operations.md (repartition) before changing it.
    #[arg(long, env = "STREAM_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,
}

// The processes wait, with backoff, for servers that are down; a malformed address would
// make them wait forever. So addresses are checked when the settings are read, and a bad
// one stops the process at once with the parser's reason.

fn mongodb_uri(raw: &str) -> Result<String, String> {
    mongodb::options::ConnectionString::parse(raw)
        .map(|_| raw.to_owned())
        .map_err(|error| error.to_string())
}

fn redis_url(raw: &str) -> Result<String, String> {
    crate::redis_conn::Topology::parse(raw).map(|_| raw.to_owned())
}

/// Reads `.env` from the working directory if there is one. Variables already set in the
/// environment win.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_addresses_are_refused_when_read() {
        assert!(mongodb_uri("mongodb://db1,db2/crm?replicaSet=rs0").is_ok());
        assert!(mongodb_uri("mongodb:/oops").is_err());
        assert!(mongodb_uri("postgres://x").is_err());
        assert!(redis_url("redis://:secret@cache:6380/2").is_ok());
        assert!(redis_url("http://cache").is_err());
        assert!(redis_url("redis+cluster://r1:7000,r2:7000").is_ok());
        assert!(redis_url("redis+cluster://r1").is_err());
    }
}
