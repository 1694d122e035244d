//! The first pass over a JSON body: everything but the records. It checks the whole body
//! is JSON, keeps each setting (at most the record size limit each), and finds and counts
//! the `data` array without holding any of it, so that settings written after `data` are
//! known before the first record is planned.

use std::io::BufRead;

use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::tap::{Tap, Tapped};
use super::{malformed, refused_by_tap, FIELDS, MAX_DEPTH};
use crate::error::ApiError;

/// What the body's `data` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataShape {
    Absent,
    Null,
    NotArray,
    /// `offset`: where its `[` is in the body.
    Array {
        offset: u64,
        records: usize,
    },
}

/// The body without its records.
pub struct Outline {
    /// The settings the body names (`accountId`, `entityType`, ...), as JSON values.
    pub settings: Map<String, Value>,
    /// A setting whose value was longer than the limit.
    pub oversized: Option<String>,
    /// The first unknown field, in name order.
    pub unknown: Option<String>,
    pub data: DataShape,
    /// Whether the body is an object at all.
    pub is_object: bool,
}

/// Reads the outline of the body in `reader`; `value_limit` bounds each setting's value.
pub fn read<R: BufRead>(reader: R, value_limit: usize) -> Result<Outline, ApiError> {
    let cell = Tapped::new(reader, 0, MAX_DEPTH);
    let first = cell.borrow_mut().peek_value().map_err(read_error)?;
    let mut parser = serde_json::Deserializer::from_reader(Tap(&cell));
    let parsed = match first {
        Some((b'{', _)) => parser.deserialize_map(BodyVisitor {
            tap: &cell,
            value_limit,
        }),
        _ => IgnoredAny::deserialize(&mut parser).map(|_| RawOutline::not_an_object()),
    };
    let raw = parsed.and_then(|raw| parser.end().map(|()| raw));
    let failure = cell.borrow().failure();
    match (raw, failure) {
        (_, Some(failure)) => Err(refused_by_tap(failure)),
        (Err(error), None) => Err(malformed(&error)),
        (Ok(raw), None) => raw.into_outline(value_limit),
    }
}

fn read_error(error: std::io::Error) -> ApiError {
    crate::ingest::UploadError::Unreadable(error.to_string()).into()
}

/// The outline as read, settings still raw bytes.
struct RawOutline {
    settings: Vec<(String, super::tap::Captured)>,
    unknown: Option<String>,
    /// A setting (or `data`) named twice: refused, not "the last one counts", so that
    /// nothing appended to a body can override what comes before it.
    repeated: Option<String>,
    data: DataShape,
    is_object: bool,
}

impl RawOutline {
    fn not_an_object() -> Self {
        Self {
            settings: Vec::new(),
            unknown: None,
            repeated: None,
            data: DataShape::Absent,
            is_object: false,
        }
    }

    fn note_unknown(&mut self, name: String) {
        if self.unknown.as_ref().is_none_or(|first| name < *first) {
            self.unknown = Some(name);
        }
    }

    fn into_outline(self, value_limit: usize) -> Result<Outline, ApiError> {
        if let Some(name) = self.repeated {
            return Err(ApiError::bad_request(
                crate::error::ErrorCode::InvalidBody,
                format!("the body names {name:?} twice"),
            )
            .with_details(serde_json::json!({ "field": name })));
        }
        let mut settings = Map::new();
        let mut oversized = None;
        for (name, captured) in self.settings {
            match captured.value(value_limit) {
                Some(bytes) => {
                    let value = serde_json::from_slice(bytes).map_err(|error| malformed(&error))?;
                    settings.insert(name, value);
                }
                None => oversized = oversized.or(Some(name)),
            }
        }
        Ok(Outline {
            settings,
            oversized,
            unknown: self.unknown,
            data: self.data,
            is_object: self.is_object,
        })
    }
}

struct BodyVisitor<'a, R> {
    tap: &'a std::cell::RefCell<Tapped<R>>,
    value_limit: usize,
}

/// The longest field name worth reading: anything longer is unknown anyway.
const NAME_LIMIT: usize = 1024;

impl<'de, R: BufRead> Visitor<'de> for BodyVisitor<'_, R> {
    type Value = RawOutline;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawOutline, A::Error> {
        let mut outline = RawOutline {
            is_object: true,
            ..RawOutline::not_an_object()
        };
        loop {
            self.tap.borrow_mut().limit_name(Some(NAME_LIMIT));
            let name = map.next_key::<String>();
            self.tap.borrow_mut().limit_name(None);
            let Some(name) = name? else {
                return Ok(outline);
            };
            let known = name == "data" || FIELDS.contains(&name.as_str());
            let seen = (name == "data" && !matches!(outline.data, DataShape::Absent))
                || outline.settings.iter().any(|(held, _)| *held == name);
            if known && seen {
                map.next_value::<IgnoredAny>()?;
                outline.repeated.get_or_insert(name);
                continue;
            }
            if name == "data" {
                outline.data = map.next_value_seed(DataSeed { tap: self.tap })?;
            } else if FIELDS.contains(&name.as_str()) {
                self.tap.borrow_mut().begin_capture(self.value_limit);
                let skipped = map.next_value::<IgnoredAny>();
                let captured = self.tap.borrow_mut().end_capture();
                skipped?;
                outline.settings.push((name, captured));
            } else {
                map.next_value::<IgnoredAny>()?;
                outline.note_unknown(name);
            }
        }
    }
}

/// Finds out what `data` is and counts its records, holding none of them.
struct DataSeed<'a, R> {
    tap: &'a std::cell::RefCell<Tapped<R>>,
}

impl<'de, R: BufRead> DeserializeSeed<'de> for DataSeed<'_, R> {
    type Value = DataShape;

    fn deserialize<D: serde::Deserializer<'de>>(self, parser: D) -> Result<DataShape, D::Error> {
        let first = self
            .tap
            .borrow_mut()
            .peek_value()
            .map_err(serde::de::Error::custom)?;
        match first {
            Some((b'[', offset)) => {
                let records = parser.deserialize_seq(Counter)?;
                Ok(DataShape::Array { offset, records })
            }
            Some((b'n', _)) => IgnoredAny::deserialize(parser).map(|_| DataShape::Null),
            _ => IgnoredAny::deserialize(parser).map(|_| DataShape::NotArray),
        }
    }
}

struct Counter;

impl<'de> Visitor<'de> for Counter {
    type Value = usize;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut records = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            records += 1;
        }
        Ok(records)
    }
}
