//! Per-action pacing, HighLevel's "drip mode": how fast one action may go, below its
//! account's processing limit. Both forms can be set; the slower one wins.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DRIP_BATCH_SIZE_MAX: u32 = 10_000;
/// Thirty days: a drip slower than one batch a month is a schedule, not a pace.
pub const DRIP_INTERVAL_SECONDS_MAX: u32 = 30 * 86_400;
pub const MAX_RECORDS_PER_MINUTE_MAX: u32 = 10_000_000;

/// At most `batch_size` records every `interval_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pacing {
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 10000, example = 500)
    )]
    pub batch_size: u32,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 2592000, example = 60)
    )]
    pub interval_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PacingError {
    pub field: &'static str,
    pub message: String,
}

impl Pacing {
    pub fn parse(raw: &Value) -> Result<Self, PacingError> {
        let Value::Object(fields) = raw else {
            return Err(PacingError {
                field: "pacing",
                message: "pacing must be an object {batchSize, intervalSeconds}".into(),
            });
        };
        if let Some(unknown) = fields
            .keys()
            .find(|key| !["batchSize", "intervalSeconds"].contains(&key.as_str()))
        {
            return Err(PacingError {
                field: "pacing",
                message: format!("unknown field {} in pacing", crate::text::quoted(unknown)),
            });
        }
        Ok(Self {
            batch_size: bounded(
                fields.get("batchSize"),
                "pacing.batchSize",
                DRIP_BATCH_SIZE_MAX,
            )?,
            interval_seconds: bounded(
                fields.get("intervalSeconds"),
                "pacing.intervalSeconds",
                DRIP_INTERVAL_SECONDS_MAX,
            )?,
        })
    }
}

/// Reads `maxRecordsPerMinute`.
pub fn parse_max_records_per_minute(raw: &Value) -> Result<u32, PacingError> {
    bounded(Some(raw), "maxRecordsPerMinute", MAX_RECORDS_PER_MINUTE_MAX)
}

fn bounded(raw: Option<&Value>, field: &'static str, max: u32) -> Result<u32, PacingError> {
    let value = raw.ok_or_else(|| PacingError {
        field,
        message: "is required".into(),
    })?;
    value
        .as_u64()
        .filter(|n| (1..=u64::from(max)).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| PacingError {
            field,
            message: format!("must be an integer from 1 to {max}"),
        })
}

/// A token bucket in GCRA terms: one record costs `emission_ms` of the bucket's time, and
/// up to `burst` records may go at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub emission_ms: f64,
    pub burst: u32,
}

/// The pace one action's batches are released at; `None` when only the account's limit
/// applies. `batch_size` is the action's batch size.
pub fn action_bucket(
    pacing: Option<Pacing>,
    max_records_per_minute: Option<u32>,
    batch_size: u32,
) -> Option<Bucket> {
    let drip = pacing.map(|p| f64::from(p.interval_seconds) * 1000.0 / f64::from(p.batch_size));
    let cap = max_records_per_minute.map(|m| 60_000.0 / f64::from(m));
    let emission_ms = match (drip, cap) {
        (None, None) => return None,
        (Some(a), Some(b)) => a.max(b),
        (Some(a), None) | (None, Some(a)) => a,
    };
    Some(Bucket {
        emission_ms,
        burst: pacing.map_or(batch_size, |p| p.batch_size),
    })
}

/// The batch size an action is planned with: a drip never releases more than its own
/// batch at once, so the action's batches are no larger.
pub fn planned_batch_size(configured: u32, pacing: Option<Pacing>) -> u32 {
    pacing
        .map_or(configured, |p| p.batch_size.min(configured))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pacing_is_read_with_bounds() {
        let ok = Pacing::parse(&json!({"batchSize": 100, "intervalSeconds": 60})).unwrap();
        assert_eq!(ok.batch_size, 100);
        assert!(Pacing::parse(&json!({"batchSize": 0, "intervalSeconds": 60})).is_err());
        assert!(Pacing::parse(&json!({"batchSize": 10_001, "intervalSeconds": 60})).is_err());
        assert!(Pacing::parse(&json!({"batchSize": 1.5, "intervalSeconds": 60})).is_err());
        assert!(Pacing::parse(&json!({"batchSize": 1})).is_err());
        assert!(Pacing::parse(&json!({"batchSize": 1, "intervalSeconds": 1, "$gt": 1})).is_err());
        assert!(Pacing::parse(&json!([1, 2])).is_err());
        assert!(parse_max_records_per_minute(&json!(-5)).is_err());
        assert_eq!(parse_max_records_per_minute(&json!(600)), Ok(600));
    }

    #[test]
    fn the_slower_pace_wins() {
        let drip = Pacing {
            batch_size: 100,
            interval_seconds: 60,
        };
        // 100 per minute = 600 ms per record; 1000 per minute = 60 ms: the drip is slower.
        let bucket = action_bucket(Some(drip), Some(1000), 1000).unwrap();
        assert_eq!(bucket.emission_ms, 600.0);
        assert_eq!(bucket.burst, 100);
        let bucket = action_bucket(Some(drip), Some(10), 1000).unwrap();
        assert_eq!(bucket.emission_ms, 6000.0);
        assert_eq!(action_bucket(None, Some(600), 500).unwrap().burst, 500);
        assert_eq!(action_bucket(None, None, 500), None);
        assert_eq!(planned_batch_size(1000, Some(drip)), 100);
        assert_eq!(planned_batch_size(50, Some(drip)), 50);
        assert_eq!(planned_batch_size(1000, None), 1000);
    }
}
