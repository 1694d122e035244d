//! A result file's bytes: CSV (RFC 4180, a header row, every cell guarded against formula
//! injection, `domain::spreadsheet`) or NDJSON (one object per row). Rows are written into
//! a buffer the caller takes from as it fills, so a file of any length streams.

use domain::results::{csv_cell, is_result_column, KeptFields, RESULT_COLUMNS};
use domain::spreadsheet::guard;
use infra::results::ResultRow;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "csv" => Some(Format::Csv),
            "ndjson" => Some(Format::Ndjson),
            _ => None,
        }
    }

    /// The format an `Accept` header asks for: NDJSON when it names it before CSV (or
    /// alone), CSV otherwise.
    pub fn accepted(accept: &str) -> Self {
        let accept = accept.to_ascii_lowercase();
        let ndjson = ["application/x-ndjson", "application/jsonl"]
            .iter()
            .filter_map(|media| accept.find(media))
            .min();
        match (ndjson, accept.find("text/csv")) {
            (Some(ndjson), Some(csv)) if ndjson < csv => Format::Ndjson,
            (Some(_), None) => Format::Ndjson,
            _ => Format::Csv,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }
}

pub struct RowWriter {
    format: Format,
    /// The CSV's field columns, after the result columns, sorted.
    fields: Vec<String>,
    csv: csv::Writer<Vec<u8>>,
    ndjson: Vec<u8>,
}

impl RowWriter {
    /// A writer with the CSV header row already written.
    pub fn new(format: Format, mut fields: Vec<String>) -> Self {
        fields.sort_unstable();
        fields.dedup();
        let mut writer = Self {
            format,
            fields,
            csv: csv::WriterBuilder::new().from_writer(Vec::with_capacity(128 * 1024)),
            ndjson: Vec::with_capacity(128 * 1024),
        };
        if format == Format::Csv {
            let header: Vec<String> = RESULT_COLUMNS
                .iter()
                .map(|column| (*column).to_owned())
                .chain(writer.fields.iter().map(|name| guard(name).into_owned()))
                .collect();
            // Writing into a Vec cannot fail.
            let _ = writer.csv.write_record(&header);
        }
        writer
    }

    pub fn row(&mut self, row: &ResultRow) {
        match self.format {
            Format::Csv => self.csv_row(row),
            Format::Ndjson => self.ndjson_row(row),
        }
    }

    /// The bytes written since the last take.
    pub fn buffered(&mut self) -> usize {
        match self.format {
            Format::Csv => self.csv.get_ref().len(),
            Format::Ndjson => self.ndjson.len(),
        }
    }

    pub fn take(&mut self) -> Vec<u8> {
        match self.format {
            Format::Csv => {
                let _ = self.csv.flush();
                // The writer's own buffer is flushed into the Vec; swap the Vec out.
                let inner = std::mem::replace(
                    &mut self.csv,
                    csv::WriterBuilder::new().from_writer(Vec::with_capacity(128 * 1024)),
                );
                inner.into_inner().unwrap_or_default()
            }
            Format::Ndjson => std::mem::take(&mut self.ndjson),
        }
    }

    fn csv_row(&mut self, row: &ResultRow) {
        let index = row.index.to_string();
        let kept = match KeptFields::of_csv_row(row.record.as_ref()) {
            // A field past the file's columns (`rows::MAX_FIELD_COLUMNS`) is left out.
            KeptFields::Kept if !self.has_columns_for(row) => KeptFields::KeptInNdjson,
            kept => kept,
        };
        let mut cells: Vec<std::borrow::Cow<'_, str>> = vec![
            index.as_str().into(),
            guard(row.key.as_deref().unwrap_or_default()),
            row.status().as_str().into(),
            row.code.as_str().into(),
            guard(row.message.as_deref().unwrap_or_default()),
            kept.as_str().into(),
        ];
        for name in &self.fields {
            let value = row
                .record
                .as_ref()
                .and_then(|record| record.fields.get(name));
            cells.push(match value {
                None => "".into(),
                Some(value) => guard(&csv_cell(value)).into_owned().into(),
            });
        }
        let _ = self
            .csv
            .write_record(cells.iter().map(|cell| cell.as_bytes()));
    }

    fn has_columns_for(&self, row: &ResultRow) -> bool {
        row.record.as_ref().is_none_or(|record| {
            record
                .fields
                .keys()
                .all(|name| is_result_column(name) || self.fields.binary_search(name).is_ok())
        })
    }

    fn ndjson_row(&mut self, row: &ResultRow) {
        let out = &mut self.ndjson;
        let kept = KeptFields::of(row.record.as_ref());
        out.extend_from_slice(b"{\"_index\":");
        out.extend_from_slice(row.index.to_string().as_bytes());
        push_pair(
            out,
            "_key",
            &row.key.as_deref().map_or(Value::Null, Value::from),
        );
        push_pair(out, "_status", &Value::from(row.status().as_str()));
        push_pair(out, "_code", &Value::from(row.code.as_str()));
        push_pair(
            out,
            "_message",
            &row.message.as_deref().map_or(Value::Null, Value::from),
        );
        push_pair(out, "_fields", &Value::from(kept.as_str()));
        if let Some(record) = &row.record {
            for (name, value) in &record.fields {
                // A record refused for holding one cannot hold it twice in a row.
                if !is_result_column(name) {
                    push_pair(out, name, value);
                }
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

fn push_pair(out: &mut Vec<u8>, name: &str, value: &Value) {
    out.push(b',');
    // Strings and JSON values always serialise.
    let _ = serde_json::to_writer(&mut *out, name);
    out.push(b':');
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::results::SubmittedRecord;
    use domain::OutcomeCode;
    use serde_json::json;

    fn row() -> ResultRow {
        ResultRow {
            index: 7,
            key: Some("a@x.io".into()),
            code: OutcomeCode::InvalidEmail,
            message: Some("-bad".into()),
            record: Some(SubmittedRecord::raw(
                7,
                &json!({"email": "a@x.io", "name": "=1+1", "tags": ["a", "b"], "age": null}),
            )),
        }
    }

    #[test]
    fn csv_rows_are_guarded_and_quoted() {
        let mut writer = RowWriter::new(
            Format::Csv,
            vec!["age".into(), "email".into(), "name".into(), "tags".into()],
        );
        writer.row(&row());
        let text = String::from_utf8(writer.take()).unwrap();
        assert_eq!(
            text,
            "_index,_key,_status,_code,_message,_fields,age,email,name,tags\n\
             7,a@x.io,failed,invalid_email,'-bad,kept,#N/A,a@x.io,'=1+1,a;b\n"
        );
    }

    #[test]
    fn ndjson_rows_are_records_with_result_keys() {
        let mut writer = RowWriter::new(Format::Ndjson, Vec::new());
        writer.row(&row());
        let line: Value = serde_json::from_slice(&writer.take()).unwrap();
        assert_eq!(
            line,
            json!({"_index": 7, "_key": "a@x.io", "_status": "failed", "_code": "invalid_email",
                   "_message": "-bad", "_fields": "kept",
                   "email": "a@x.io", "name": "=1+1", "tags": ["a", "b"], "age": null})
        );
    }

    #[test]
    fn accept_picks_the_first_format_named() {
        assert_eq!(Format::accepted("application/x-ndjson"), Format::Ndjson);
        assert_eq!(
            Format::accepted("text/csv, application/x-ndjson"),
            Format::Csv
        );
        assert_eq!(
            Format::accepted("application/x-ndjson;q=1, text/csv"),
            Format::Ndjson
        );
        assert_eq!(Format::accepted("*/*"), Format::Csv);
    }
}
