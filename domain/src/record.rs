//! One submitted record, validated and normalised. Anything that is not a known field with a
//! value of the right type is refused here, so nothing a client sends reaches a query or an
//! update document unchecked.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fields::{FieldIndex, FieldType};
use crate::outcome::OutcomeCode;
use crate::text::{bounded, MESSAGE_MAX_BYTES};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

pub const EMAIL_MAX_LEN: usize = 254;

/// The longest domain name and label DNS allows (RFC 1035), counted in characters for
/// internationalised names, which are kept as UTF-8 (RFC 6531).
pub const DOMAIN_MAX_CHARS: usize = 253;
pub const LABEL_MAX_CHARS: usize = 63;

/// A normalised email: trimmed, lowercased, in Unicode NFC (so that a composed and a
/// decomposed `é` are one key), structurally plausible. The dedup key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, RecordError> {
        let trimmed = raw.trim();
        if has_forbidden_control(trimmed, true) {
            return Err(RecordError::new(
                OutcomeCode::InvalidCharacters,
                "email contains a control character",
            ));
        }
        let invalid = |why: &str| RecordError::new(OutcomeCode::InvalidEmail, why);
        // Anything longer cannot become valid by normalising: refuse before copying it.
        if trimmed.len() > 4 * EMAIL_MAX_LEN {
            return Err(invalid("email is longer than 254 bytes"));
        }
        let normalised: String = trimmed.to_lowercase().nfc().collect();
        if normalised.is_empty() {
            return Err(invalid("email is empty"));
        }
        if normalised.len() > EMAIL_MAX_LEN {
            return Err(invalid("email is longer than 254 bytes"));
        }
        if normalised.chars().any(is_invisible_or_space) {
            return Err(invalid("email contains whitespace or invisible characters"));
        }
        let Some((local, domain)) = normalised.split_once('@') else {
            return Err(invalid("email has no '@'"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(invalid("email local part must be 1-64 bytes"));
        }
        if domain.contains('@') {
            return Err(invalid("email has more than one '@'"));
        }
        if !is_host_name(domain) {
            return Err(invalid(
                "email domain is not a valid host name: dot-separated labels of 1-63 \
                 letters, digits or hyphens, not starting or ending with a hyphen",
            ));
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A host name with at least two labels, each of 1-63 letters (of any script, with their
/// combining marks), digits or hyphens, not starting or ending with a hyphen; 253
/// characters at most. `bücher.de` is one; `exa_mple.com`, `-x.com`, `x..com` are not.
pub(crate) fn is_host_name(domain: &str) -> bool {
    let label_ok = |label: &str| {
        let chars = label.chars().count();
        (1..=LABEL_MAX_CHARS).contains(&chars)
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c == '-' || c.is_alphanumeric() || is_combining_mark(c))
    };
    domain.contains('.')
        && domain.chars().count() <= DOMAIN_MAX_CHARS
        && domain.split('.').all(label_ok)
}

/// A control character the store refuses (NUL) or that has no place in a contact's
/// fields: any C0 or C1 control, except tab, newline and carriage return in free text
/// (`free_text_whitespace`). Field names and emails allow none of them.
pub(crate) fn has_forbidden_control(text: &str, free_text_whitespace: bool) -> bool {
    text.chars()
        .any(|c| c.is_control() && !(free_text_whitespace && matches!(c, '\t' | '\n' | '\r')))
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_invisible_or_space(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
        )
}

/// Why a record was refused; becomes the record's failed outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RecordError {
    pub code: OutcomeCode,
    pub message: String,
}

impl RecordError {
    /// The message is bounded (`text::MESSAGE_MAX_BYTES`): it ends up in a log line.
    pub(crate) fn new(code: OutcomeCode, message: impl AsRef<str>) -> Self {
        Self {
            code,
            message: bounded(message.as_ref(), MESSAGE_MAX_BYTES),
        }
    }
}

/// The CSV cell that clears its field, as `null` does in JSON (Salesforce's Data Loader
/// marker). An empty cell leaves the field as it is.
pub const CLEAR_MARKER: &str = "#N/A";

/// The JSON record a row of text cells stands for (a CSV row under its header): an empty
/// cell leaves its field out, as an absent JSON field does, `#N/A` is `null` (clear it),
/// and a cell is a number, a boolean or a list where its field is one (an `integer`,
/// `number`, `boolean` or `string[]` field, built-in or the account's; a list's items are
/// separated by `;`). Anything else stays text, so that `RecordChange::parse` gives a bad
/// cell the same code as the same mistake in JSON.
pub fn record_from_cells<'a>(
    cells: impl IntoIterator<Item = (&'a str, &'a str)>,
    fields: &FieldIndex,
) -> Value {
    let mut record = Map::new();
    for (field, cell) in cells {
        if cell.is_empty() {
            continue;
        }
        let trimmed = cell.trim();
        if trimmed == CLEAR_MARKER {
            record.insert(field.to_owned(), Value::Null);
            continue;
        }
        let field_type = fields.get(field).map(|definition| definition.field_type);
        let value = match field_type {
            Some(FieldType::Integer | FieldType::Number) => number_cell(trimmed),
            Some(FieldType::Boolean) if trimmed.eq_ignore_ascii_case("true") => {
                Some(Value::Bool(true))
            }
            Some(FieldType::Boolean) if trimmed.eq_ignore_ascii_case("false") => {
                Some(Value::Bool(false))
            }
            Some(FieldType::TextList) => Some(Value::Array(
                cell.split(';')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(Value::from)
                    .collect(),
            )),
            _ => None,
        }
        .unwrap_or_else(|| Value::from(cell));
        record.insert(field.to_owned(), value);
    }
    Value::Object(record)
}

fn number_cell(cell: &str) -> Option<Value> {
    if let Ok(integer) = cell.parse::<i64>() {
        return Some(Value::from(integer));
    }
    cell.parse::<f64>()
        .ok()
        .filter(|float| float.is_finite())
        .map(Value::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn email_is_trimmed_and_lowercased() {
        assert_eq!(
            Email::parse("  Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
        assert_eq!(
            Email::parse("Ünï@bücher.de").unwrap().as_str(),
            "ünï@bücher.de"
        );
    }

    #[test]
    fn implausible_emails_are_refused() {
        for raw in [
            "",
            "plain",
            "a@b",
            "a@@b.com",
            "@b.com",
            "a b@c.com",
            "a\u{200B}@b.com",
            "a@-b.com",
            "a@b..com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} should be invalid");
        }
    }

    #[test]
    fn emails_are_nfc_so_composed_and_decomposed_forms_are_one_key() {
        let composed = Email::parse("Jos\u{e9}@caf\u{e9}.fr").unwrap();
        let decomposed = Email::parse("JOSE\u{301}@CAFE\u{301}.FR").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(composed.as_str(), "jos\u{e9}@caf\u{e9}.fr");
    }

    #[test]
    fn email_domains_must_be_host_names_in_any_script() {
        for raw in [
            "a@exa_mple.com",
            "a@-x.com",
            "a@x-.com",
            "a@x..com",
            "a@.x.com",
            "a@x.com.",
            "a@localhost",
            "a@x!.com",
        ] {
            assert_eq!(
                Email::parse(raw).unwrap_err().code,
                OutcomeCode::InvalidEmail,
                "{raw:?}"
            );
        }
        let long_label = format!("a@{}.com", "x".repeat(LABEL_MAX_CHARS + 1));
        assert!(Email::parse(&long_label).is_err());
        let longest_label = format!("a@{}.com", "x".repeat(LABEL_MAX_CHARS));
        assert!(Email::parse(&longest_label).is_ok());
        for raw in [
            "bücher@exämple.de",
            "user@xn--bcher-kva.de",
            "a@sub.x-y.co",
            "a@1.2.io",
            "d@\u{938}\u{902}\u{938}\u{94d}\u{915}\u{943}\u{924}.\u{92d}\u{93e}\u{930}\u{924}",
            "a@\u{4f8b}\u{5b50}.\u{4e2d}\u{56fd}",
        ] {
            assert!(Email::parse(raw).is_ok(), "{raw:?} should be valid");
        }
    }

    #[test]
    fn csv_cells_take_the_type_of_their_field() {
        let record = record_from_cells(
            [
                ("email", "a@b.co"),
                ("seats", " 12 "),
                ("score", "0.25"),
                ("vip", "TRUE"),
                ("tags", "vip; new ;;"),
                ("tier", "007"),
                ("since", "2026-01-02"),
            ],
            &account_fields(),
        );
        assert_eq!(
            record,
            json!({
                "email": "a@b.co", "seats": 12, "score": 0.25, "vip": true,
                "tags": ["vip", "new"], "tier": "007", "since": "2026-01-02",
            })
        );
        // A cell that is not of its field's type stays text and fails like JSON would.
        let wrong = record_from_cells([("email", "a@b.co"), ("seats", "many")], &account_fields());
        assert_eq!(wrong["seats"], "many");
    }

    #[test]
    fn the_csv_marker_clears_and_an_empty_cell_leaves_alone() {
        let record = record_from_cells(
            [
                ("email", "a@b.co"),
                ("name", "#N/A"),
                ("age", " #N/A "),
                ("status", ""),
            ],
            &FieldIndex::built_in(crate::entity::EntityType::Contact),
        );
        assert_eq!(
            record,
            json!({"email": "a@b.co", "name": null, "age": null})
        );
    }

    fn account_fields() -> FieldIndex {
        let definitions = crate::fields::FieldDefinitions::parse(
            &json!({ "fields": [
                { "name": "tier", "type": "string", "enum": ["gold", "silver"] },
                { "name": "seats", "type": "integer", "min": 1 },
                { "name": "score", "type": "number" },
                { "name": "vip", "type": "boolean" },
                { "name": "since", "type": "date" },
                { "name": "tags", "type": "string[]" },
            ]}),
            crate::entity::EntityType::Contact,
        )
        .unwrap();
        FieldIndex::new(crate::entity::EntityType::Contact, &definitions)
    }

    proptest! {
        #[test]
        fn canonically_equivalent_emails_are_one_key(local in "[a-zA-Z\u{e0}-\u{ff}]{1,10}") {
            let nfd: String = local.nfd().collect();
            let composed = Email::parse(&format!("{local}@x.io"));
            let decomposed = Email::parse(&format!("{nfd}@x.io"));
            prop_assert_eq!(composed, decomposed);
        }
    }
}
