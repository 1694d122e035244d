//! `application/x-ndjson`: one JSON record per line.
//!
//! Each line is parsed on its own with `serde_json`, so a broken line fails its own record
//! (`malformed_record`, or `record_too_large` past the record size limit) and the next
//! line is read as usual. Blank lines are not records.

use std::io::BufRead;

use domain::OutcomeCode;
use serde_json::Value;

use super::{Record, UploadError};

pub struct NdjsonRecords<R> {
    reader: R,
    line: Vec<u8>,
    line_number: u64,
    max_record_bytes: usize,
}

impl<R: BufRead> NdjsonRecords<R> {
    pub fn new(reader: R, max_record_bytes: usize) -> Self {
        Self {
            reader,
            line: Vec::new(),
            line_number: 0,
            max_record_bytes,
        }
    }
}

impl<R: BufRead> Iterator for NdjsonRecords<R> {
    type Item = Result<Record, UploadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line.clear();
            let read = read_line_capped(&mut self.reader, &mut self.line, self.max_record_bytes);
            let number = self.line_number + 1;
            match read {
                Err(error) => return Some(Err(UploadError::from_io(error))),
                Ok(Line::End) => return None,
                Ok(Line::TooLong) => {
                    self.line_number = number;
                    return Some(Ok(Record::Unreadable {
                        code: OutcomeCode::RecordTooLarge,
                        message: format!(
                            "line {number} is longer than {} bytes",
                            self.max_record_bytes
                        ),
                    }));
                }
                Ok(Line::Complete) => {
                    self.line_number = number;
                    let text = if number == 1 {
                        self.line
                            .strip_prefix(b"\xEF\xBB\xBF")
                            .unwrap_or(&self.line)
                    } else {
                        &self.line
                    };
                    let text = text.trim_ascii();
                    if text.is_empty() {
                        continue;
                    }
                    return Some(Ok(match serde_json::from_slice::<Value>(text) {
                        Ok(value) => Record::Value(super::without_result_columns(value)),
                        Err(error) => Record::Unreadable {
                            code: OutcomeCode::MalformedRecord,
                            message: format!("line {number} is not a JSON value: {error}"),
                        },
                    }));
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Complete,
    /// Longer than the limit; the rest of it was read and dropped.
    TooLong,
    End,
}

/// Reads up to and including the next `\n` into `line` (without it), keeping at most `max`
/// bytes: a longer line is consumed and dropped, never held.
fn read_line_capped(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    let mut read_any = false;
    let mut too_long = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(match (read_any, too_long) {
                (false, _) => Line::End,
                (true, true) => Line::TooLong,
                (true, false) => Line::Complete,
            });
        }
        read_any = true;
        let newline = available.iter().position(|&byte| byte == b'\n');
        let content = &available[..newline.unwrap_or(available.len())];
        if !too_long {
            if line.len() + content.len() > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(content);
            }
        }
        let used = newline.map_or(available.len(), |at| at + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &str, max: usize) -> Vec<Result<Value, (OutcomeCode, String)>> {
        // A tiny buffer, so that lines straddle reads.
        let reader = std::io::BufReader::with_capacity(3, input.as_bytes());
        NdjsonRecords::new(reader, max)
            .map(|record| match record {
                Ok(Record::Value(value)) => Ok(value),
                Ok(
                    Record::Unreadable { code, message } | Record::Refused { code, message, .. },
                ) => Err((code, message)),
                Err(error) => panic!("upload error {error}"),
            })
            .collect()
    }

    #[test]
    fn each_line_is_a_record_and_a_broken_line_fails_alone() {
        let input = "\u{feff}{\"email\":\"a@x.io\"}\r\n\n  \n{\"email\": oops}\n[1]\n{\"email\":\"b@x.io\"}";
        let records = read(input, 100);
        assert_eq!(records.len(), 4);
        assert_eq!(
            records[0].as_ref().ok(),
            Some(&serde_json::json!({"email": "a@x.io"}))
        );
        let (code, message) = records[1].as_ref().err().unwrap();
        assert_eq!(*code, OutcomeCode::MalformedRecord);
        assert!(message.starts_with("line 4 "), "{message}");
        assert_eq!(records[2].as_ref().ok(), Some(&serde_json::json!([1])));
        assert_eq!(
            records[3].as_ref().ok(),
            Some(&serde_json::json!({"email": "b@x.io"}))
        );
    }

    #[test]
    fn a_line_past_the_limit_is_dropped_and_reading_goes_on() {
        let long = format!("{{\"name\":\"{}\"}}", "n".repeat(50));
        let input = format!("{long}\n{{\"email\":\"a@x.io\"}}\n{long}");
        let records = read(&input, 30);
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0].as_ref().err().map(|e| e.0),
            Some(OutcomeCode::RecordTooLarge)
        );
        assert!(records[1].is_ok());
        assert_eq!(
            records[2].as_ref().err().map(|e| e.0),
            Some(OutcomeCode::RecordTooLarge)
        );
    }
}
