//! `text/csv`: a header row naming the fields, then one record per row (RFC 4180, parsed
//! with the `csv` crate).
//!
//! Header names are matched case-insensitively against the record fields; an unknown,
//! repeated or missing `email` column refuses the upload, since it would fail every row.
//! A row with the wrong number of cells, or not UTF-8, fails its own record
//! (`malformed_record`). A row past the record size limit refuses the upload: an open
//! quote makes the rest of the file one cell, and there is no telling where the row meant
//! to end.

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use csv::{ByteRecord, ErrorKind};
use domain::record::record_from_cells;
use domain::OutcomeCode;
use domain::RecordRules;
use serde_json::json;

use super::{Record, UploadError};

/// The parser's own buffer: what it may hold beyond the row it is reading.
const PARSER_BUFFER: usize = 64 * 1024;

pub struct CsvRecords<R> {
    reader: csv::Reader<Budgeted<R>>,
    /// The record field of each column; `None` for a result file's own columns, dropped.
    fields: Vec<Option<String>>,
    rules: RecordRules,
    row: ByteRecord,
    bytes_in_row: Arc<AtomicUsize>,
    max_record_bytes: usize,
}

/// Reads the header row; the rows follow as the iterator is driven.
/// `rules` say which columns a row may have (the key, the entity's fields and the
/// account's own) and the type each cell takes.
pub fn open<R: Read>(
    input: R,
    max_record_bytes: usize,
    rules: &RecordRules,
) -> Result<CsvRecords<R>, UploadError> {
    let bytes_in_row = Arc::new(AtomicUsize::new(0));
    let budgeted = Budgeted {
        inner: input,
        bytes_in_row: bytes_in_row.clone(),
        limit: max_record_bytes.saturating_add(PARSER_BUFFER),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .buffer_capacity(PARSER_BUFFER)
        .from_reader(budgeted);
    let mut header = ByteRecord::new();
    let has_header = reader
        .read_byte_record(&mut header)
        .map_err(|error| row_error(error, 1, max_record_bytes))?;
    let fields = if has_header {
        header_fields(&header, rules)?
    } else {
        Vec::new()
    };
    bytes_in_row.store(0, Ordering::Relaxed);
    Ok(CsvRecords {
        reader,
        fields,
        rules: rules.clone(),
        row: ByteRecord::new(),
        bytes_in_row,
        max_record_bytes,
    })
}

/// The record field each column is: the key, a built-in field or one of the account's,
/// named in any case, once. The key the action matches by is required. The columns a
/// result file adds (`_index`, `_status`, ...) are dropped: a failed file, fixed, is
/// submitted as it is.
fn header_fields(
    header: &ByteRecord,
    rules: &RecordRules,
) -> Result<Vec<Option<String>>, UploadError> {
    let columns = rules.columns();
    let required = rules.required_columns();
    let refuse =
        |message: String, details: serde_json::Value| UploadError::CsvHeader { message, details };
    let mut fields: Vec<Option<String>> = Vec::with_capacity(header.len());
    for (position, cell) in header.iter().enumerate() {
        let cell = if position == 0 {
            cell.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(cell)
        } else {
            cell
        };
        let written = String::from_utf8_lossy(cell).trim().to_owned();
        if domain::results::is_result_column(&written) {
            fields.push(None);
            continue;
        }
        let lowercase = written.to_lowercase();
        let canonical = columns
            .iter()
            .find(|name| name.to_lowercase() == lowercase)
            .cloned();
        let Some(name) = canonical else {
            let allowed = &columns;
            return Err(refuse(
                format!(
                    "CSV column {} is not a record field",
                    domain::text::quoted(&written)
                ),
                json!({ "column": domain::text::bounded(&written, domain::text::ECHO_MAX_BYTES), "allowed": allowed }),
            ));
        };
        if fields.iter().flatten().any(|field| *field == name) {
            return Err(refuse(
                format!("CSV column {name:?} appears twice"),
                json!({ "column": name }),
            ));
        }
        fields.push(Some(name));
    }
    if let Some(missing) = required
        .iter()
        .find(|column| !fields.iter().flatten().any(|field| field == *column))
    {
        return Err(refuse(
            format!("the CSV header row must name a {missing} column"),
            json!({ "columns": fields, "required": required }),
        ));
    }
    Ok(fields)
}

impl<R: Read> Iterator for CsvRecords<R> {
    type Item = Result<Record, UploadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.fields.is_empty() {
            return None;
        }
        let line = self.reader.position().line();
        let read = self.reader.read_byte_record(&mut self.row);
        self.bytes_in_row.store(0, Ordering::Relaxed);
        match read {
            Ok(false) => None,
            Ok(true) => Some(Ok(self.record(line))),
            Err(error) => match error.kind() {
                ErrorKind::UnequalLengths { len, .. } => Some(Ok(Record::Unreadable {
                    code: OutcomeCode::MalformedRecord,
                    message: format!(
                        "CSV line {line} has {len} cells where the header has {}",
                        self.fields.len()
                    ),
                })),
                _ => Some(Err(row_error(error, line, self.max_record_bytes))),
            },
        }
    }
}

impl<R> CsvRecords<R> {
    fn record(&self, line: u64) -> Record {
        let mut cells = Vec::with_capacity(self.row.len());
        for cell in self.row.iter() {
            match std::str::from_utf8(cell) {
                // A cell of a result file the platform wrote, fixed and sent back, carries
                // what the tenant typed (`domain::spreadsheet`).
                Ok(text) => cells.push(domain::spreadsheet::unguard(text)),
                Err(_) => {
                    return Record::Unreadable {
                        code: OutcomeCode::MalformedRecord,
                        message: format!("CSV line {line} is not UTF-8"),
                    }
                }
            }
        }
        let pairs = self
            .fields
            .iter()
            .zip(cells)
            .filter_map(|(field, cell)| Some((field.as_deref()?, cell)));
        Record::Value(record_from_cells(pairs, &self.rules.fields))
    }
}

/// A read error that ends the upload.
fn row_error(error: csv::Error, line: u64, max_record_bytes: usize) -> UploadError {
    match error.into_kind() {
        ErrorKind::Io(io) => {
            let row_too_large = io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<RowTooLarge>().is_some());
            if row_too_large {
                UploadError::CsvRowTooLarge {
                    row: line,
                    limit: max_record_bytes,
                }
            } else {
                UploadError::from_io(io)
            }
        }
        other => UploadError::Unreadable(format!("CSV line {line}: {other:?}")),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("CSV row too large")]
struct RowTooLarge;

/// Counts the bytes handed to the parser since the current row began; past the limit the
/// row is refused before the parser can hold it.
struct Budgeted<R> {
    inner: R,
    bytes_in_row: Arc<AtomicUsize>,
    limit: usize,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        let in_row = self.bytes_in_row.fetch_add(read, Ordering::Relaxed) + read;
        if in_row > self.limit {
            return Err(io::Error::other(RowTooLarge));
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    type Read = Vec<Result<Value, (OutcomeCode, String)>>;

    fn read(input: &str, max: usize) -> Result<Read, UploadError> {
        let records = open(
            input.as_bytes(),
            max,
            &domain::RecordRules::contacts(domain::ActionType::Upsert),
        )?;
        records
            .map(|record| {
                record.map(|record| match record {
                    Record::Value(value) => Ok(value),
                    Record::Unreadable { code, message }
                    | Record::Refused { code, message, .. } => Err((code, message)),
                })
            })
            .collect()
    }

    #[test]
    fn quotes_a_result_file_put_before_formulas_are_taken_off() {
        let input = "email,name\na@x.io,'=1+1\nb@x.io,''=x\nc@x.io,'plain\nd@x.io,'-5\n";
        let names: Vec<Value> = read(input, 1000)
            .unwrap()
            .into_iter()
            .map(|record| record.unwrap()["name"].clone())
            .collect();
        assert_eq!(
            names,
            vec![json!("=1+1"), json!("'=x"), json!("'plain"), json!("'-5")]
        );
    }

    #[test]
    fn a_result_file_is_an_upload_without_its_own_columns() {
        let input = "_index,_key,_status,_code,_message,_fields,email,name\n\
                     3,a@x.io,failed,invalid_email,bad,kept,a@x.io,'=Ann\n";
        let records = read(input, 1000).unwrap();
        assert_eq!(
            records,
            vec![Ok(json!({"email": "a@x.io", "name": "=Ann"}))]
        );
        // Without a key column it is still refused.
        let keyless = read("_index,_status,name\n1,failed,x\n", 1000).err();
        assert!(matches!(keyless, Some(UploadError::CsvHeader { .. })));
    }

    #[test]
    fn rows_become_records_under_the_header() {
        let input = "\u{feff}Email, Name ,age\na@x.io,Ann,42\n\"b@x.io\",\"Bob, \"\"Jr\"\"\",\nc@x.io,,old\n";
        let records = read(input, 1000).unwrap();
        assert_eq!(
            records,
            vec![
                Ok(json!({"email": "a@x.io", "name": "Ann", "age": 42})),
                Ok(json!({"email": "b@x.io", "name": "Bob, \"Jr\""})),
                Ok(json!({"email": "c@x.io", "age": "old"})),
            ]
        );
    }

    #[test]
    fn a_row_with_the_wrong_cell_count_fails_alone() {
        let records = read("email,name\na@x.io\nb@x.io,B,extra\nc@x.io,C\n", 1000).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0].as_ref().err().map(|e| e.0),
            Some(OutcomeCode::MalformedRecord)
        );
        assert!(records[0].as_ref().err().unwrap().1.contains("line 2"));
        assert_eq!(
            records[1].as_ref().err().map(|e| e.0),
            Some(OutcomeCode::MalformedRecord)
        );
        assert_eq!(records[2], Ok(json!({"email": "c@x.io", "name": "C"})));
    }

    #[test]
    fn a_bad_header_refuses_the_upload() {
        for header in ["name,age\n", "email,phone\n", "email,Email\n"] {
            let error = read(header, 1000).err();
            assert!(
                matches!(error, Some(UploadError::CsvHeader { .. })),
                "{header}"
            );
        }
        assert!(read("", 1000).unwrap().is_empty());
    }

    #[test]
    fn an_open_quote_refuses_the_upload_within_the_row_limit() {
        let input = format!("email,name\na@x.io,\"{}\n", "x".repeat(300_000));
        let error = read(&input, 1000).err();
        assert!(
            matches!(error, Some(UploadError::CsvRowTooLarge { row: 2, .. })),
            "{error:?}"
        );
    }
}
