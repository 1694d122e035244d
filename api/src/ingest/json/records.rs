//! The second pass over a JSON body: the records of its `data` array, one at a time.
//!
//! Each record is skipped by the parser while the tap keeps its bytes (up to the record
//! size limit), then parsed on its own: a record past the limit fails alone with
//! `record_too_large` and keeps its place in the numbering, as an NDJSON line does.

use std::cell::RefCell;
use std::io::BufRead;

use domain::OutcomeCode;
use serde::de::{Deserializer as _, Error as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;

use super::tap::{Captured, Tap, TapFailure, Tapped};
use super::MAX_DEPTH;
use crate::ingest::{Record, RecordSink as Sink, UploadError};

/// Hands each record of the array that starts at `reader` (its `[`) to `sink`.
pub fn stream<R: BufRead>(
    reader: R,
    max_record_bytes: usize,
    sink: &mut Sink<'_>,
) -> Result<(), UploadError> {
    // The array is inside the top-level object.
    let cell = Tapped::new(reader, 1, MAX_DEPTH);
    let mut stopped = None;
    let mut parser = serde_json::Deserializer::from_reader(Tap(&cell));
    let streamed = parser.deserialize_seq(RecordsVisitor {
        tap: &cell,
        max_record_bytes,
        sink,
        stopped: &mut stopped,
    });
    if let Some(error) = stopped {
        return Err(error);
    }
    // The first pass refused anything deeper; this is only a guard.
    if let Some(TapFailure::TooDeep { limit }) = cell.borrow().failure() {
        let (message, details) = super::too_deep(limit);
        return Err(UploadError::MalformedJson { message, details });
    }
    // The first pass read the same bytes as JSON: what is left is a failed read.
    streamed.map_err(|error| UploadError::Unreadable(error.to_string()))
}

struct RecordsVisitor<'a, 's, R> {
    tap: &'a RefCell<Tapped<R>>,
    max_record_bytes: usize,
    sink: &'a mut Sink<'s>,
    /// Why the sink stopped the reading, kept out of serde's error.
    stopped: &'a mut Option<UploadError>,
}

impl<'de, R: BufRead> Visitor<'de> for RecordsVisitor<'_, '_, R> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0u64;
        loop {
            // Begun before the parser looks for the next record: it takes the record's
            // first byte while doing so.
            self.tap.borrow_mut().begin_capture(self.max_record_bytes);
            let next = seq.next_element::<IgnoredAny>();
            let captured = self.tap.borrow_mut().end_capture();
            if next?.is_none() {
                return Ok(());
            }
            let handed = record(&captured, index, self.max_record_bytes).and_then(&mut *self.sink);
            if let Err(error) = handed {
                *self.stopped = Some(error);
                return Err(A::Error::custom("stopped"));
            }
            index += 1;
        }
    }
}

fn record(captured: &Captured, index: u64, limit: usize) -> Result<Record, UploadError> {
    let Some(bytes) = captured.value(limit) else {
        return Ok(Record::Unreadable {
            code: OutcomeCode::RecordTooLarge,
            message: format!("record {index} of data is longer than {limit} bytes"),
        });
    };
    // What skipping does not check: a number's range, UTF-8 in strings, depth. As when
    // the body was parsed whole, such a body is not JSON the api reads.
    serde_json::from_slice::<Value>(bytes)
        .map(Record::Value)
        .map_err(|error| UploadError::MalformedJson {
            message: format!("record {index} of data is not valid JSON: {error}"),
            details: serde_json::json!({ "record": index }),
        })
}
