//! Time as the platform stores and shows it: UTC, millisecond precision, one fixed-width
//! RFC 3339 form. Fixed width makes the text sort like the instant, which the list view's
//! "newest first" relies on.

use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn from_millis(millis: i64) -> Option<Self> {
        Utc.timestamp_millis_opt(millis).single().map(Self)
    }

    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        // Truncate so that a value survives a round trip through its text form unchanged.
        Self::from_millis(at.timestamp_millis()).unwrap_or(Self(at))
    }

    /// Accepts any RFC 3339 offset and converts to UTC.
    pub fn parse_rfc3339(raw: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(raw)
            .ok()
            .map(|at| Self::from_datetime(at.with_timezone(&Utc)))
    }

    pub fn millis(&self) -> i64 {
        self.0.timestamp_millis()
    }

    pub fn datetime(&self) -> DateTime<Utc> {
        self.0
    }

    pub fn millis_since(&self, earlier: Timestamp) -> i64 {
        self.millis() - earlier.millis()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse_rfc3339(&raw).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "not an RFC 3339 time: {}",
                crate::text::quoted(&raw)
            ))
        })
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .examples([serde_json::json!("2026-11-28T10:00:00.000Z")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_convert_to_fixed_width_utc() {
        let at = Timestamp::parse_rfc3339("2024-03-20T12:00:00+02:00").unwrap();
        assert_eq!(at.to_string(), "2024-03-20T10:00:00.000Z");
        let precise = Timestamp::parse_rfc3339("2024-03-20T10:00:00.123456Z").unwrap();
        assert_eq!(precise.to_string(), "2024-03-20T10:00:00.123Z");
        assert!(Timestamp::parse_rfc3339("tomorrow").is_none());
    }
}
