//! One attempt at a delivery over HTTP, as the Standard Webhooks specification has it, and
//! the guard against reaching internal services (SSRF): the endpoint's URL is checked again
//! (a setting may have changed since it was registered), and a host name is resolved by
//! `GuardedResolver`, which hands the connection only the addresses it checked, so a DNS
//! answer cannot change between the check and the connection (rebinding). No proxy, no
//! redirects: the request goes where it was checked to go.

use std::net::SocketAddr;
use std::sync::Arc;

use domain::webhook::{check_address, check_url, signature_header, UrlError};
use domain::Timestamp;
use infra::webhooks::{Delivery, Endpoint};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::StatusCode;

use super::DeliverySettings;

/// Longest wait for a receiver to accept the connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Bytes of an error kept in a delivery's history.
const ERROR_BYTES: usize = 300;

/// What came of one attempt.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The receiver's status code, if it answered.
    pub status: Option<u16>,
    /// Why no answer came (or the URL was refused).
    pub error: Option<String>,
    /// A 429's or 503's `Retry-After`, in ms.
    pub retry_after_ms: Option<u64>,
}

pub fn client(settings: &DeliverySettings) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        // A receiver that does not even accept the connection (blackholed) gives its
        // sender back within seconds, not at the end of the whole attempt's timeout.
        .connect_timeout(CONNECT_TIMEOUT.min(settings.timeout))
        .no_proxy()
        .https_only(!settings.allow_private_networks)
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private_networks: settings.allow_private_networks,
        }))
        .user_agent(concat!("crm-bulk-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Resolves a host name and keeps only the addresses a delivery may reach.
struct GuardedResolver {
    allow_private_networks: bool,
}

/// What a tenant sees (in its delivery's attempts) of a refused host: not which internal
/// range its name resolved to (that would map the network for it); the log says.
#[derive(Debug, thiserror::Error)]
#[error("address not allowed")]
struct RefusedHost;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private_networks;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut reason = "no address";
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| match check_address(address.ip()) {
                    Ok(()) => true,
                    Err(_) if allow_private => true,
                    Err(why) => {
                        reason = why.as_str();
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                tracing::warn!(
                    host,
                    reason,
                    "a webhook host resolves only to addresses deliveries may not reach"
                );
                return Err(Box::new(RefusedHost) as _);
            }
            let addresses: Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

/// Sends `delivery` to `endpoint`, signed with its secrets, timestamped `now`.
pub async fn send(
    client: &reqwest::Client,
    settings: &DeliverySettings,
    endpoint: &Endpoint,
    delivery: &Delivery,
    now: Timestamp,
) -> Outcome {
    let url = match check_url(&endpoint.url, settings.allow_private_networks) {
        Ok(url) => url,
        Err(error) => {
            let error = match error {
                // Which internal range, the log says, not the tenant.
                UrlError::ForbiddenAddress(_) | UrlError::LocalHost => {
                    tracing::warn!(endpoint = %endpoint.id, %error, "a webhook url refused");
                    "address not allowed".to_owned()
                }
                other => other.to_string(),
            };
            return Outcome {
                error: Some(format!("url refused: {error}")),
                ..Outcome::default()
            };
        }
    };
    let timestamp = now.millis().div_euclid(1000);
    let keys = endpoint.signing_keys(now);
    let signature = signature_header(
        keys.iter().map(Vec::as_slice),
        &delivery.id,
        timestamp,
        &delivery.body,
    );
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &delivery.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(delivery.body.clone())
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status();
            let retry_after_ms = if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| retry_after_ms(value, std::time::SystemTime::now()))
            } else {
                None
            };
            Outcome {
                status: Some(status.as_u16()),
                error: None,
                retry_after_ms,
            }
        }
        Err(error) => Outcome {
            error: Some(describe(error)),
            ..Outcome::default()
        },
    }
}

/// A `Retry-After` in ms: delay-seconds, or an HTTP date (RFC 9110), the time until it
/// (0 for one past). `None` when it is neither.
fn retry_after_ms(value: &str, now: std::time::SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at.duration_since(now).unwrap_or_default();
    Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
}

/// The error and its causes, bounded: reqwest's own message only says the request failed.
/// Without the URL: its query may carry the receiver's token, and this is stored and logged.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    domain::text::bounded(&text, ERROR_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(retry_after_ms("120", now), Some(120_000));
        assert_eq!(retry_after_ms(" 0 ", now), Some(0));
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(30_000)
        );
        // The obsolete forms RFC 9110 still asks recipients to accept.
        assert_eq!(
            retry_after_ms("Sunday, 06-Nov-94 08:51:37 GMT", now),
            Some(120_000)
        );
        assert_eq!(
            retry_after_ms("Sun Nov  6 08:49:47 1994", now),
            Some(10_000)
        );
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", now), None);
        assert_eq!(retry_after_ms("-5", now), None);
    }

    /// What is stored and logged of a failed request never holds its URL (a query may
    /// carry the receiver's token).
    #[tokio::test]
    async fn a_described_error_leaves_the_url_out() {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_millis(500))
            .build()
            .expect("a client");
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        let error = client
            .get("http://127.0.0.1:9/hook?token=s3cr3t")
            .send()
            .await
            .expect_err("nothing listens on the discard port");
        let text = describe(error);
        assert!(
            !text.contains("s3cr3t") && !text.contains("token"),
            "{text}"
        );
    }

    /// A host name is checked on the addresses it resolves to, at delivery: `localhost`
    /// passes the registration's name check only as a dotted name, but resolves to loopback
    /// and is refused here all the same (a DNS answer that turns private, e.g. rebinding).
    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_refused() {
        let name = || -> Name { "localhost".parse().expect("a host name") };
        let guarded = GuardedResolver {
            allow_private_networks: false,
        };
        let refused = match guarded.resolve(name()).await {
            Ok(_) => panic!("localhost resolved to an allowed address"),
            Err(error) => error.to_string(),
        };
        // The tenant is told no more than that (the log names the range).
        assert_eq!(refused, "address not allowed");
        let allowed = GuardedResolver {
            allow_private_networks: true,
        };
        let addresses: Vec<SocketAddr> = match allowed.resolve(name()).await {
            Ok(addresses) => addresses.collect(),
            Err(error) => panic!("{error}"),
        };
        assert!(addresses.iter().all(|a| a.ip().is_loopback()));
    }
}
