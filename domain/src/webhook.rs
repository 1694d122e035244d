//! Webhooks as the Standard Webhooks specification has them (<https://www.standardwebhooks.com/>):
//! which lifecycle events are sent and under which names, the `whsec_` secrets and the
//! `v1,` signatures, the deterministic message ids, the retry schedule, and which URLs and
//! addresses a delivery may reach. Pure: the caller brings the random bytes, the jitter,
//! the clock and the resolved addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ActionId, ActionStatus};

/// What an endpoint subscribes to. `Completed` of the event stream becomes one of
/// `action.completed`, `action.failed` or `action.cancelled`, as the fold ends the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WebhookEvent {
    #[serde(rename = "action.started")]
    Started,
    #[serde(rename = "action.paused")]
    Paused,
    #[serde(rename = "action.resumed")]
    Resumed,
    #[serde(rename = "action.cancelling")]
    Cancelling,
    #[serde(rename = "action.completed")]
    Completed,
    #[serde(rename = "action.failed")]
    Failed,
    #[serde(rename = "action.cancelled")]
    Cancelled,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 7] = [
        WebhookEvent::Started,
        WebhookEvent::Paused,
        WebhookEvent::Resumed,
        WebhookEvent::Cancelling,
        WebhookEvent::Completed,
        WebhookEvent::Failed,
        WebhookEvent::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Started => "action.started",
            WebhookEvent::Paused => "action.paused",
            WebhookEvent::Resumed => "action.resumed",
            WebhookEvent::Cancelling => "action.cancelling",
            WebhookEvent::Completed => "action.completed",
            WebhookEvent::Failed => "action.failed",
            WebhookEvent::Cancelled => "action.cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == raw)
    }

    /// The webhook an event of an action's stream is sent as; `status` is the action's
    /// status once the event is folded (it tells how a `Completed` ended). `None` for the
    /// events no webhook reports.
    pub fn of_event(event_type: &str, status: ActionStatus) -> Option<Self> {
        Some(match event_type {
            "Started" => WebhookEvent::Started,
            "Paused" => WebhookEvent::Paused,
            "Resumed" => WebhookEvent::Resumed,
            "CancelRequested" => WebhookEvent::Cancelling,
            "Completed" => match status {
                ActionStatus::Failed => WebhookEvent::Failed,
                ActionStatus::Cancelled => WebhookEvent::Cancelled,
                _ => WebhookEvent::Completed,
            },
            _ => return None,
        })
    }
}

/// The webhooks an event of an action's stream may be sent as, whatever the action's
/// status: a `Completed` is one of three, as the fold ends it. The deliverer asks whether
/// any endpoint subscribes to one of these before it builds the action's view, so events
/// nobody subscribes to cost nothing.
pub fn candidates_of_event(event_type: &str) -> &'static [WebhookEvent] {
    match event_type {
        "Started" => &[WebhookEvent::Started],
        "Paused" => &[WebhookEvent::Paused],
        "Resumed" => &[WebhookEvent::Resumed],
        "CancelRequested" => &[WebhookEvent::Cancelling],
        "Completed" => &[
            WebhookEvent::Completed,
            WebhookEvent::Failed,
            WebhookEvent::Cancelled,
        ],
        _ => &[],
    }
}

/// The event types `lua/lib.lua` copies to a partition's hooks stream: keep in step with
/// `HOOK_TYPES` there (a test compares them).
pub const LIFECYCLE_EVENT_TYPES: [&str; 5] = [
    "Started",
    "Paused",
    "Resumed",
    "CancelRequested",
    "Completed",
];

/// Secrets are `whsec_` + base64 of the key; the key is what signs.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a new secret (the spec asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// A secret as shown to the client once, from `SECRET_BYTES` random bytes.
pub fn secret_from_bytes(bytes: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The signing key of a secret: the base64-decoded part after `whsec_`.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX)?;
    STANDARD.decode(encoded).ok().filter(|key| !key.is_empty())
}

/// One `v1,` signature: base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], message_id: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per key, space-separated (during a
/// rotation the old and the new secret both sign, so a receiver holding either verifies).
pub fn signature_header<'a>(
    keys: impl IntoIterator<Item = &'a [u8]>,
    message_id: &str,
    timestamp: i64,
    body: &str,
) -> String {
    keys.into_iter()
        .map(|key| sign(key, message_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `webhook-id` of the delivery of an action's event (its `seq`) to an endpoint: a
/// function of the three, so whoever stores it (again, after a crash) names it the same
/// and a receiver deduplicates on it.
pub fn message_id(endpoint: &str, action: ActionId, seq: u64) -> String {
    let digest = Sha256::digest(format!("{endpoint}\n{action}\n{seq}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// The delays before each attempt, in ms: the first is the first attempt's. The spec's
/// schedule, or a compressed one (tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<u64>);

/// Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
pub const STANDARD_SCHEDULE_SECS: [u64; 10] = [
    0, 5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400,
];

/// A receiver's `Retry-After` is honoured up to this long (ms).
pub const MAX_RETRY_AFTER_MS: u64 = 24 * 3600 * 1000;

impl Default for RetrySchedule {
    fn default() -> Self {
        Self(STANDARD_SCHEDULE_SECS.iter().map(|s| s * 1000).collect())
    }
}

impl RetrySchedule {
    /// A comma-separated list of delays in ms (`0,10,50`); at least one.
    pub fn parse(raw: &str) -> Option<Self> {
        let delays: Option<Vec<u64>> = raw.split(',').map(|d| d.trim().parse().ok()).collect();
        delays.filter(|d| !d.is_empty()).map(Self)
    }

    pub fn attempts(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }

    /// How long after `attempts_made` failed attempts the next one is due (ms), `None` when
    /// none is left. `jitter` in `[0, 1)` spreads it by ±20 %, so that the retries of an
    /// outage do not all come back at once. `retry_after` (ms), a receiver's `Retry-After`
    /// on a 429 or 503, delays it further, up to `MAX_RETRY_AFTER_MS`.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        jitter: f64,
        retry_after: Option<u64>,
    ) -> Option<u64> {
        let base = *self.0.get(usize::try_from(attempts_made).ok()?)?;
        let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        let jittered = (base as f64 * spread).round() as u64;
        let asked = retry_after.map_or(0, |ms| ms.min(MAX_RETRY_AFTER_MS));
        Some(jittered.max(asked))
    }
}

/// Why an address may not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForbiddenAddress {
    Unspecified,
    Loopback,
    /// RFC 1918 private ranges.
    Private,
    /// 100.64.0.0/10, carrier-grade NAT (and some clouds' internal services).
    SharedCgnat,
    LinkLocal,
    /// fc00::/7.
    UniqueLocal,
    Multicast,
    Broadcast,
    /// Documentation, benchmarking and reserved ranges: nothing public lives there.
    Reserved,
    /// 169.254.169.254, fd00:ec2::254: where a cloud hands out its credentials.
    CloudMetadata,
}

impl ForbiddenAddress {
    pub fn as_str(self) -> &'static str {
        match self {
            ForbiddenAddress::Unspecified => "unspecified",
            ForbiddenAddress::Loopback => "loopback",
            ForbiddenAddress::Private => "private",
            ForbiddenAddress::SharedCgnat => "shared (CGNAT)",
            ForbiddenAddress::LinkLocal => "link-local",
            ForbiddenAddress::UniqueLocal => "unique-local",
            ForbiddenAddress::Multicast => "multicast",
            ForbiddenAddress::Broadcast => "broadcast",
            ForbiddenAddress::Reserved => "reserved",
            ForbiddenAddress::CloudMetadata => "cloud metadata",
        }
    }
}

/// Whether a delivery may connect to `ip`: `Err` names why not. Checked on the addresses
/// a host name resolves to at each delivery, the very ones connected to, so a DNS answer
/// that changes after registration (rebinding) cannot reach an internal service.
pub fn check_address(ip: IpAddr) -> Result<(), ForbiddenAddress> {
    match ip {
        IpAddr::V4(v4) => check_v4(v4),
        IpAddr::V6(v6) => check_v6(v6),
    }
}

fn check_v4(ip: Ipv4Addr) -> Result<(), ForbiddenAddress> {
    let [a, b, c, _] = ip.octets();
    let forbidden = if ip == Ipv4Addr::new(169, 254, 169, 254) {
        ForbiddenAddress::CloudMetadata
    } else if a == 0 {
        ForbiddenAddress::Unspecified
    } else if a == 127 {
        ForbiddenAddress::Loopback
    } else if a == 10 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) {
        ForbiddenAddress::Private
    } else if a == 100 && (64..128).contains(&b) {
        ForbiddenAddress::SharedCgnat
    } else if a == 169 && b == 254 {
        ForbiddenAddress::LinkLocal
    } else if ip.is_broadcast() {
        ForbiddenAddress::Broadcast
    } else if (224..240).contains(&a) {
        ForbiddenAddress::Multicast
    } else if a >= 240
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        ForbiddenAddress::Reserved
    } else {
        return Ok(());
    };
    Err(forbidden)
}

fn check_v6(ip: Ipv6Addr) -> Result<(), ForbiddenAddress> {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Err(ForbiddenAddress::CloudMetadata);
    }
    if ip.is_unspecified() {
        return Err(ForbiddenAddress::Unspecified);
    }
    if ip.is_loopback() {
        return Err(ForbiddenAddress::Loopback);
    }
    // Forms that carry an IPv4 address are judged by it: mapped (::ffff:a.b.c.d), the
    // deprecated compatible form (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return check_v4(embedded(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return check_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return check_v4(embedded(s[1], s[2]));
    }
    let forbidden = if s[0] & 0xfe00 == 0xfc00 {
        ForbiddenAddress::UniqueLocal
    } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        // fec0::/10, the deprecated site-local range, is as internal as link-local.
        ForbiddenAddress::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        ForbiddenAddress::Multicast
    } else if (s[0] == 0x2001 && (s[1] == 0xdb8 || s[1] == 0))
        // Documentation; Teredo (it tunnels to an address of its own choosing); discard-only;
        // the 64:ff9b:1::/48 local NAT64 range.
        || s[..4] == [0x100, 0, 0, 0]
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
    {
        ForbiddenAddress::Reserved
    } else {
        return Ok(());
    };
    Err(forbidden)
}

/// The longest endpoint URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// Why an endpoint URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the url is longer than {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("the url is not an absolute URL")]
    Malformed,
    #[error("the url must be https")]
    NotHttps,
    #[error("the url must not carry credentials")]
    Credentials,
    #[error("the url has no host")]
    NoHost,
    #[error("the url's host is {}, which deliveries may not reach", .0.as_str())]
    ForbiddenAddress(ForbiddenAddress),
    #[error("the url's host is local, which deliveries may not reach")]
    LocalHost,
}

/// Checks an endpoint URL at registration (and again before each delivery): absolute,
/// `https` (or `http` when private networks are allowed), no credentials, and a host that
/// is not a forbidden address literal or a local name. A host name's addresses are checked
/// when it is resolved, at delivery.
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, UrlError> {
    if raw.len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong);
    }
    let url = url::Url::parse(raw).map_err(|_| UrlError::Malformed)?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err(UrlError::NotHttps),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if allow_private {
        return url.host().map(|_| url.clone()).ok_or(UrlError::NoHost);
    }
    match url.host() {
        None => Err(UrlError::NoHost),
        Some(url::Host::Ipv4(ip)) => check_v4(ip).map_err(UrlError::ForbiddenAddress),
        Some(url::Host::Ipv6(ip)) => check_v6(ip).map_err(UrlError::ForbiddenAddress),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            let local = name == "localhost"
                || name.ends_with(".localhost")
                || name.ends_with(".local")
                || name.ends_with(".internal")
                || !name.contains('.');
            if local {
                Err(UrlError::LocalHost)
            } else {
                Ok(())
            }
        }
    }
    .map(|()| url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whatever the status an event is folded to, the webhook it becomes is among its
    /// candidates: the deliverer's filter before the fold never drops one it would send.
    #[test]
    fn an_event_is_sent_as_one_of_its_candidates() {
        use crate::ActionStatus::*;
        for event_type in LIFECYCLE_EVENT_TYPES
            .iter()
            .copied()
            .chain(["BatchApplied"])
        {
            for status in [
                Queued, Scheduled, Running, Paused, Cancelling, Completed, Failed, Cancelled,
            ] {
                let sent = WebhookEvent::of_event(event_type, status);
                let candidates = candidates_of_event(event_type);
                match sent {
                    Some(event) => assert!(candidates.contains(&event), "{event_type} {status:?}"),
                    None => assert!(candidates.is_empty(), "{event_type}"),
                }
            }
        }
    }

    fn v4(raw: &str) -> Result<(), ForbiddenAddress> {
        check_address(raw.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_refused_with_their_reason() {
        use ForbiddenAddress::*;
        for (raw, why) in [
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.254", SharedCgnat),
            ("169.254.169.254", CloudMetadata),
            ("169.254.1.1", LinkLocal),
            ("0.0.0.0", Unspecified),
            ("224.0.0.1", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.0.2.10", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fd00:ec2::254", CloudMetadata),
            ("fd12:3456::1", UniqueLocal),
            ("fc00::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("ff02::1", Multicast),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", CloudMetadata),
            ("::ffff:10.0.0.1", Private),
            ("64:ff9b::a9fe:a9fe", CloudMetadata),
            ("2002:7f00:1::", Loopback),
            ("2001:db8::1", Reserved),
        ] {
            assert_eq!(v4(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for raw in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(v4(raw), Ok(()), "{raw}");
        }
    }

    proptest! {
        /// Every IPv4 address is judged the same on its own and in each IPv6 form that
        /// carries it, so wrapping an internal address never sneaks it through.
        #[test]
        fn an_ipv4_address_is_judged_alike_in_every_ipv6_form(bits in any::<u32>()) {
            let ip = Ipv4Addr::from(bits);
            let own = check_v4(ip);
            prop_assert_eq!(check_v6(ip.to_ipv6_mapped()), own);
            let [a, b, c, d] = ip.octets();
            let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0,
                u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
            prop_assert_eq!(check_v6(nat64), own);
            let six_to_four = Ipv6Addr::new(0x2002, u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]), 0, 0, 0, 0, 1);
            prop_assert_eq!(check_v6(six_to_four), own);
        }

        /// The private ranges are refused wherever in the range the address falls.
        #[test]
        fn every_address_of_the_internal_ranges_is_refused(host in any::<u32>()) {
            for (base, prefix) in [
                (Ipv4Addr::new(10, 0, 0, 0), 8),
                (Ipv4Addr::new(127, 0, 0, 0), 8),
                (Ipv4Addr::new(172, 16, 0, 0), 12),
                (Ipv4Addr::new(192, 168, 0, 0), 16),
                (Ipv4Addr::new(169, 254, 0, 0), 16),
                (Ipv4Addr::new(100, 64, 0, 0), 10),
                (Ipv4Addr::new(224, 0, 0, 0), 4),
            ] {
                let mask = u32::MAX >> prefix;
                let ip = Ipv4Addr::from(u32::from(base) | (host & mask));
                prop_assert!(check_v4(ip).is_err(), "{}", ip);
            }
            let ula = Ipv6Addr::from((0xfc00u128 << 112) | (u128::from(host) << 40));
            prop_assert!(check_v6(ula).is_err());
        }

        /// Jitter keeps a retry within ±20 % of the schedule, and never earlier than a
        /// receiver's (bounded) Retry-After.
        #[test]
        fn retries_keep_to_the_schedule(attempt in 0u32..12, jitter in 0.0f64..1.0,
            retry_after in proptest::option::of(0u64..200_000_000)) {
            let schedule = RetrySchedule::default();
            match schedule.next_delay(attempt, jitter, retry_after) {
                None => prop_assert!(attempt >= 10),
                Some(delay) => {
                    let base = STANDARD_SCHEDULE_SECS[attempt as usize] * 1000;
                    let floor = retry_after.unwrap_or(0).min(MAX_RETRY_AFTER_MS);
                    prop_assert!(delay >= floor);
                    prop_assert!(delay <= ((base as f64) * 1.2).ceil() as u64 || delay == floor);
                    prop_assert!(delay as f64 >= (base as f64 * 0.8).floor());
                }
            }
        }
    }

    #[test]
    fn the_schedule_is_the_specs_and_can_be_compressed() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.attempts(), 10);
        assert_eq!(schedule.next_delay(0, 0.5, None), Some(0));
        assert_eq!(schedule.next_delay(1, 0.5, None), Some(5_000));
        assert_eq!(schedule.next_delay(9, 0.5, None), Some(86_400_000));
        assert_eq!(schedule.next_delay(10, 0.5, None), None);
        let quick = RetrySchedule::parse("0, 10,20").unwrap();
        assert_eq!(quick.attempts(), 3);
        assert_eq!(quick.next_delay(2, 0.5, Some(1_000)), Some(1_000));
        assert_eq!(RetrySchedule::parse(""), None);
        assert_eq!(RetrySchedule::parse("1,x"), None);
    }

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signatures_match_the_specifications_example() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let two = signature_header(
            [key.as_slice(), b"other".as_slice()],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        assert!(two.starts_with(&format!("{signature} v1,")));
    }

    #[test]
    fn secrets_round_trip_and_message_ids_are_stable() {
        let secret = secret_from_bytes(&[7; SECRET_BYTES]);
        assert!(secret.starts_with("whsec_"));
        assert_eq!(secret_key(&secret), Some(vec![7; SECRET_BYTES]));
        assert_eq!(secret_key("whsec_"), None);
        assert_eq!(secret_key("nope"), None);
        let action = ActionId::parse("01JDQ6V4J8Q0Y5Z6X7W8V9T0S1").unwrap();
        let id = message_id("ep_1", action, 4);
        assert_eq!(id, message_id("ep_1", action, 4));
        assert_ne!(id, message_id("ep_1", action, 5));
        assert_ne!(id, message_id("ep_2", action, 4));
        assert_eq!(id.len(), 4 + 32);
    }

    #[test]
    fn urls_are_https_to_public_hosts_unless_private_networks_are_allowed() {
        assert!(check_url("https://hooks.example.com/x?y=1", false).is_ok());
        assert!(check_url("https://8.8.8.8/x", false).is_ok());
        assert_eq!(
            check_url("http://hooks.example.com/", false),
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            check_url("http://127.0.0.1/hook", false),
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            check_url("https://127.0.0.1/hook", false),
            Err(UrlError::ForbiddenAddress(ForbiddenAddress::Loopback))
        );
        assert_eq!(
            check_url("https://169.254.169.254/latest", false),
            Err(UrlError::ForbiddenAddress(ForbiddenAddress::CloudMetadata))
        );
        assert_eq!(
            check_url("https://[fd00:ec2::254]/", false),
            Err(UrlError::ForbiddenAddress(ForbiddenAddress::CloudMetadata))
        );
        assert_eq!(
            check_url("https://localhost/", false),
            Err(UrlError::LocalHost)
        );
        assert_eq!(
            check_url("https://user:pw@example.com/", false),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            check_url("ftp://example.com/", true),
            Err(UrlError::NotHttps)
        );
        assert_eq!(check_url("not a url", true), Err(UrlError::Malformed));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(check_url(&long, true), Err(UrlError::TooLong));
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
    }

    #[test]
    fn completed_is_named_by_how_the_action_ended() {
        use ActionStatus as S;
        assert_eq!(
            WebhookEvent::of_event("Completed", S::Cancelled),
            Some(WebhookEvent::Cancelled)
        );
        assert_eq!(
            WebhookEvent::of_event("Completed", S::Failed),
            Some(WebhookEvent::Failed)
        );
        assert_eq!(
            WebhookEvent::of_event("Completed", S::Completed),
            Some(WebhookEvent::Completed)
        );
        assert_eq!(
            WebhookEvent::of_event("CancelRequested", S::Cancelling),
            Some(WebhookEvent::Cancelling)
        );
        assert_eq!(WebhookEvent::of_event("BatchProcessed", S::Running), None);
        for event in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(event.as_str()), Some(event));
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(json, format!("\"{}\"", event.as_str()));
        }
    }
}
