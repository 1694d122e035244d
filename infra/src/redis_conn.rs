//! Redis connections with explicit timeouts.
//!
//! Shared, multiplexed commands go through a `ConnectionManager` that reconnects by itself
//! with capped exponential backoff. A blocking read (`XREADGROUP ... BLOCK`) gets its own
//! connection whose response timeout exceeds the block time, because a shared connection's
//! short timeout would cut the block short and a long block would stall everyone else.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisResult};

pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn shared(url: &str) -> RedisResult<ConnectionManager> {
    let client = Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(6);
    client.get_connection_manager_with_config(config).await
}

/// A connection for one blocking reader; `block` is the longest `BLOCK` it will send.
pub async fn blocking(url: &str, block: Duration) -> RedisResult<MultiplexedConnection> {
    let client = Client::open(url)?;
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(block + RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
