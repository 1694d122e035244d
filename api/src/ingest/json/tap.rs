//! A reader between serde_json and a spooled JSON body that sees every byte the parser
//! takes, so the parser can skip values (`IgnoredAny`, nothing allocated) while the tap
//! keeps what is needed of them, bounded:
//!
//! - the raw bytes of the value being skipped, up to a limit (a record, a setting), to be
//!   parsed on their own once their size is known;
//! - the nesting depth, refused past a limit: serde_json skips a value with one byte of
//!   stack per level and no recursion limit, so `[[[[…` would otherwise cost the body;
//! - the length of a field name, which serde_json reads whole before we see it.
//!
//! serde_json reads from a `Read` one byte at a time, so the tap sees exactly what the
//! parser has taken: everything up to the current position, plus at most the one byte
//! it peeked at (the delimiter after a number).

use std::cell::RefCell;
use std::io::{self, BufRead, Read};

/// Why the tap stopped the parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapFailure {
    TooDeep { limit: usize },
    NameTooLong { limit: usize },
}

/// The raw bytes of one skipped value.
pub struct Captured {
    /// The value, and possibly the one delimiter the parser peeked at after a number.
    bytes: Vec<u8>,
    /// Bytes past the limit arrived and were dropped.
    overflowed: bool,
}

impl Captured {
    /// The value's bytes, or `None` when it is longer than `limit`.
    pub fn value(&self, limit: usize) -> Option<&[u8]> {
        let is_number = matches!(self.bytes.first(), Some(b'-' | b'0'..=b'9'));
        let mut value = self.bytes.as_slice();
        // A number ends with a digit; anything after it is the peeked delimiter.
        if is_number && !value.last().is_some_and(u8::is_ascii_digit) {
            value = &value[..value.len() - 1];
        }
        (!self.overflowed && value.len() <= limit).then_some(value)
    }
}

struct Capture {
    bytes: Vec<u8>,
    /// The value's limit plus the possible peeked delimiter.
    room: usize,
    overflowed: bool,
}

impl Capture {
    fn take(&mut self, byte: u8) {
        // Whatever comes before the value (blanks, the `,` or `:` before it) is not kept.
        if self.bytes.is_empty() && (byte.is_ascii_whitespace() || matches!(byte, b',' | b':')) {
            return;
        }
        if self.bytes.len() < self.room {
            self.bytes.push(byte);
        } else {
            self.overflowed = true;
        }
    }
}

/// The reader and what the tap has seen of it.
pub struct Tapped<R> {
    reader: R,
    offset: u64,
    depth: usize,
    max_depth: usize,
    in_string: bool,
    escaped: bool,
    capture: Option<Capture>,
    /// Bytes of a field name still allowed, while one is being read.
    name_budget: Option<usize>,
    name_limit: usize,
    failure: Option<TapFailure>,
}

impl<R: BufRead> Tapped<R> {
    /// `depth` is how deep `reader` starts (1 inside the top-level object).
    pub fn new(reader: R, depth: usize, max_depth: usize) -> RefCell<Self> {
        RefCell::new(Self {
            reader,
            offset: 0,
            depth,
            max_depth,
            in_string: false,
            escaped: false,
            capture: None,
            name_budget: None,
            name_limit: 0,
            failure: None,
        })
    }

    /// The first byte of the next value, skipping blanks, without taking it.
    /// Returns the byte and its offset from where the reader started.
    pub fn peek_value(&mut self) -> io::Result<Option<(u8, u64)>> {
        loop {
            let buffered = self.reader.fill_buf()?;
            if buffered.is_empty() {
                return Ok(None);
            }
            match buffered.iter().position(|byte| !byte.is_ascii_whitespace()) {
                Some(at) => return Ok(Some((buffered[at], self.offset + at as u64))),
                None => {
                    // Blanks the parser would skip anyway; only its line count misses them.
                    let blanks = buffered.len();
                    self.reader.consume(blanks);
                    self.offset += blanks as u64;
                }
            }
        }
    }

    /// Keeps what the parser takes from now on, up to `limit` bytes of value.
    pub fn begin_capture(&mut self, limit: usize) {
        let mut bytes = self.capture.take().map(|c| c.bytes).unwrap_or_default();
        bytes.clear();
        self.capture = Some(Capture {
            bytes,
            room: limit.saturating_add(1),
            overflowed: false,
        });
    }

    pub fn end_capture(&mut self) -> Captured {
        let capture = self.capture.take();
        Captured {
            overflowed: capture.as_ref().is_some_and(|c| c.overflowed),
            bytes: capture.map(|c| c.bytes).unwrap_or_default(),
        }
    }

    /// Bounds the field name the parser reads next to `limit` bytes (`None`: no bound).
    pub fn limit_name(&mut self, limit: Option<usize>) {
        self.name_budget = limit;
        self.name_limit = limit.unwrap_or(0);
    }

    /// What stopped the parse, if the tap did.
    pub fn failure(&self) -> Option<TapFailure> {
        self.failure
    }

    fn observe(&mut self, byte: u8) -> Result<(), TapFailure> {
        let was_in_string = self.in_string;
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
            }
        } else {
            match byte {
                b'"' => self.in_string = true,
                b'[' | b'{' => {
                    self.depth += 1;
                    if self.depth > self.max_depth {
                        return Err(TapFailure::TooDeep {
                            limit: self.max_depth,
                        });
                    }
                }
                b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        if let Some(budget) = self.name_budget.as_mut() {
            if was_in_string || !byte.is_ascii_whitespace() {
                *budget = budget.checked_sub(1).ok_or(TapFailure::NameTooLong {
                    limit: self.name_limit,
                })?;
            }
        }
        if let Some(capture) = self.capture.as_mut() {
            capture.take(byte);
        }
        Ok(())
    }
}

/// The `Read` handed to serde_json; visitors reach the same `Tapped` through the cell.
pub struct Tap<'a, R>(pub &'a RefCell<Tapped<R>>);

impl<R: BufRead> Read for Tap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut tapped = self.0.borrow_mut();
        let read = tapped.reader.read(buf)?;
        tapped.offset += read as u64;
        for &byte in &buf[..read] {
            if let Err(failure) = tapped.observe(byte) {
                tapped.failure = Some(failure);
                return Err(io::Error::other("the JSON body is refused"));
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;
    use serde::Deserialize;

    fn skip(json: &str, max_depth: usize) -> (Result<(), String>, Option<TapFailure>) {
        let cell = Tapped::new(json.as_bytes(), 0, max_depth);
        let mut parser = serde_json::Deserializer::from_reader(Tap(&cell));
        let skipped = IgnoredAny::deserialize(&mut parser)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let failure = cell.borrow().failure();
        (skipped, failure)
    }

    #[test]
    fn depth_is_bounded_but_brackets_in_strings_do_not_count() {
        assert_eq!(skip("[[[1]]]", 3).1, None);
        assert_eq!(
            skip("[[[[1]]]]", 3).1,
            Some(TapFailure::TooDeep { limit: 3 })
        );
        assert_eq!(skip(r#"["[[[[\"[[[", "\\"]"#, 1), (Ok(()), None));
    }

    #[test]
    fn a_capture_keeps_one_value_whatever_its_kind() {
        for (json, value) in [
            ("[ 12 ,3]", "12"),
            ("[-1.5e3]", "-1.5e3"),
            (r#"[ {"a": [1, "]"]} ]"#, r#"{"a": [1, "]"]}"#),
            ("[true]", "true"),
            (r#"["x\"y"]"#, r#""x\"y""#),
        ] {
            let cell = Tapped::new(json.as_bytes(), 0, 10);
            let mut parser = serde_json::Deserializer::from_reader(Tap(&cell));
            // Start after the `[`, as a sequence visitor would.
            let mut open = [0u8; 1];
            Tap(&cell).read_exact(&mut open).unwrap();
            cell.borrow_mut().begin_capture(100);
            IgnoredAny::deserialize(&mut parser).unwrap();
            let captured = cell.borrow_mut().end_capture();
            assert_eq!(captured.value(100), Some(value.as_bytes()), "{json}");
            assert_eq!(captured.value(value.len() - 1), None, "{json}");
        }
    }
}
