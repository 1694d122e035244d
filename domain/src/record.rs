//! One submitted record, validated and normalised. Anything that is not a known field with a
//! value of the right type is refused here, so nothing a client sends reaches a query or an
//! update document unchecked.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::action::ActionType;
use crate::fields::{CustomChange, FieldIndex, FieldType};
use crate::outcome::OutcomeCode;
use crate::text::{bounded, quoted, MESSAGE_MAX_BYTES};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

pub const EMAIL_MAX_LEN: usize = 254;
pub const NAME_MAX_CHARS: usize = 256;
pub const STATUS_MAX_CHARS: usize = 64;
pub const AGE_MAX: i64 = 150;

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
fn is_host_name(domain: &str) -> bool {
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
fn has_forbidden_control(text: &str, free_text_whitespace: bool) -> bool {
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

/// What a record does to one field it names: gives it a value, or removes it (`null` in
/// JSON, the `#N/A` marker in CSV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldChange<T> {
    Set(T),
    Clear,
}

impl<T> FieldChange<T> {
    /// The value set, if any.
    pub fn value(&self) -> Option<&T> {
        match self {
            FieldChange::Set(value) => Some(value),
            FieldChange::Clear => None,
        }
    }
}

/// As the record said it: the value, or `null` for a clear.
impl<T: Serialize> Serialize for FieldChange<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for FieldChange<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer)? {
            Some(value) => FieldChange::Set(value),
            None => FieldChange::Clear,
        })
    }
}

/// A field present in the stored JSON, `null` included: a change. (Absent: `None`.)
fn named<'de, D, T>(deserializer: D) -> Result<Option<FieldChange<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    FieldChange::deserialize(deserializer).map(Some)
}

/// The fields of a contact that bulk actions manage. `None` means "leave as it is".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactFields {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "named"
    )]
    pub name: Option<FieldChange<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "named"
    )]
    pub age: Option<FieldChange<i64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "named"
    )]
    pub status: Option<FieldChange<String>>,
}

impl ContactFields {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.age.is_none() && self.status.is_none()
    }

    /// Without the clears: what a new contact is created with (it has nothing to remove).
    pub fn without_clears(&self) -> Self {
        let set = |change: &Option<FieldChange<String>>| {
            change
                .as_ref()
                .filter(|change| matches!(change, FieldChange::Set(_)))
                .cloned()
        };
        Self {
            name: set(&self.name),
            age: self
                .age
                .clone()
                .filter(|age| matches!(age, FieldChange::Set(_))),
            status: set(&self.status),
        }
    }
}

/// A validated record: the key and the changes to make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactChange {
    pub email: Email,
    #[serde(flatten)]
    pub fields: ContactFields,
    /// The account's own fields the record names, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, CustomChange>,
}

/// The fields a record may have.
pub const KNOWN_FIELDS: [&str; 4] = ["email", "name", "age", "status"];

/// The CSV cell that clears its field, as `null` does in JSON (Salesforce's Data Loader
/// marker). An empty cell leaves the field as it is.
pub const CLEAR_MARKER: &str = "#N/A";

/// The JSON record a row of text cells stands for (a CSV row under its header): an empty
/// cell leaves its field out, as an absent JSON field does, `#N/A` is `null` (clear it),
/// and a cell is a number, a boolean or a list where its field is one (`age`, or the
/// account's `integer`, `number`, `boolean` and `string[]` fields; a list's items are
/// separated by `;`). Anything else stays text, so that `ContactChange::parse` gives a bad
/// cell the same code as the same mistake in JSON.
pub fn record_from_cells<'a>(
    cells: impl IntoIterator<Item = (&'a str, &'a str)>,
    custom: &FieldIndex,
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
        let field_type = match field {
            "age" => Some(FieldType::Integer),
            _ => custom.get(field).map(|definition| definition.field_type),
        };
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

impl ContactChange {
    /// A record checked against the built-in fields and the account's own (`custom`, the
    /// definition in force for the action).
    pub fn parse(
        record: &Value,
        action_type: ActionType,
        custom: &FieldIndex,
    ) -> Result<Self, RecordError> {
        let Value::Object(object) = record else {
            return Err(RecordError::new(
                OutcomeCode::NotAnObject,
                "record must be a JSON object",
            ));
        };
        check_field_names(object, custom)?;
        let email = match object.get("email") {
            None | Some(Value::Null) => {
                return Err(RecordError::new(
                    OutcomeCode::MissingEmail,
                    "email is required",
                ))
            }
            Some(Value::String(raw)) => Email::parse(raw)?,
            Some(_) => {
                return Err(RecordError::new(
                    OutcomeCode::InvalidType,
                    "email must be a string",
                ))
            }
        };
        let fields = ContactFields {
            name: bounded_string(object, "name", NAME_MAX_CHARS)?,
            age: age(object)?,
            status: bounded_string(object, "status", STATUS_MAX_CHARS)?,
        };
        let mut changes = BTreeMap::new();
        for (name, value) in object {
            if let Some(definition) = custom.get(name) {
                changes.insert(name.clone(), definition.check(value)?);
            }
        }
        match action_type {
            ActionType::Update if fields.is_empty() && changes.is_empty() => Err(RecordError::new(
                OutcomeCode::NoFieldsToUpdate,
                "update needs at least one field besides email (a value, or null to clear it)",
            )),
            // A delete is keyed by email alone; the fields were checked but carry no meaning.
            ActionType::Delete => Ok(Self {
                email,
                fields: ContactFields::default(),
                custom: BTreeMap::new(),
            }),
            // A new contact has nothing to clear, and a list it edits starts with the adds.
            ActionType::Create => Ok(Self {
                email,
                fields: fields.without_clears(),
                custom: changes
                    .into_iter()
                    .filter_map(|(name, change)| Some((name, change.on_insert()?)))
                    .collect(),
            }),
            _ => Ok(Self {
                email,
                fields,
                custom: changes,
            }),
        }
    }
}

fn check_field_names(object: &Map<String, Value>, custom: &FieldIndex) -> Result<(), RecordError> {
    if let Some(key) = object.keys().find(|key| has_forbidden_control(key, false)) {
        return Err(RecordError::new(
            OutcomeCode::InvalidCharacters,
            format!("field name {} contains a control character", quoted(key)),
        ));
    }
    if let Some(key) = object
        .keys()
        .find(|key| key.starts_with('$') || key.contains('.'))
    {
        return Err(RecordError::new(
            OutcomeCode::ForbiddenFieldName,
            format!(
                "field name {} may not start with '$' or contain '.'",
                quoted(key)
            ),
        ));
    }
    if let Some(key) = object
        .keys()
        .find(|key| !KNOWN_FIELDS.contains(&key.as_str()) && custom.get(key).is_none())
    {
        return Err(RecordError::new(
            OutcomeCode::UnknownField,
            format!(
                "unknown field {}; known fields are email, name, age, status and the \
                 account's own (GET /fields/contact)",
                quoted(key)
            ),
        ));
    }
    Ok(())
}

fn bounded_string(
    object: &Map<String, Value>,
    field: &str,
    max_chars: usize,
) -> Result<Option<FieldChange<String>>, RecordError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(FieldChange::Clear)),
        Some(Value::String(text)) if text.chars().count() > max_chars => Err(RecordError::new(
            OutcomeCode::InvalidValue,
            format!("{field} must be at most {max_chars} characters"),
        )),
        Some(Value::String(text)) if has_forbidden_control(text, true) => Err(RecordError::new(
            OutcomeCode::InvalidCharacters,
            format!(
                "{field} contains a control character (only tab, newline and carriage \
                     return are allowed)"
            ),
        )),
        Some(Value::String(text)) => Ok(Some(FieldChange::Set(text.clone()))),
        Some(_) => Err(RecordError::new(
            OutcomeCode::InvalidType,
            format!("{field} must be a string or null"),
        )),
    }
}

fn age(object: &Map<String, Value>) -> Result<Option<FieldChange<i64>>, RecordError> {
    match object.get("age") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(FieldChange::Clear)),
        Some(Value::Number(number)) => match number.as_i64() {
            Some(age) if (0..=AGE_MAX).contains(&age) => Ok(Some(FieldChange::Set(age))),
            Some(_) => Err(RecordError::new(
                OutcomeCode::InvalidValue,
                format!("age must be between 0 and {AGE_MAX}"),
            )),
            None if number.is_u64() => Err(RecordError::new(
                OutcomeCode::InvalidValue,
                format!("age must be between 0 and {AGE_MAX}"),
            )),
            None => Err(RecordError::new(
                OutcomeCode::InvalidType,
                "age must be an integer",
            )),
        },
        Some(_) => Err(RecordError::new(
            OutcomeCode::InvalidType,
            "age must be an integer",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn none() -> FieldIndex {
        FieldIndex::default()
    }

    fn code_of(record: Value, action_type: ActionType) -> OutcomeCode {
        ContactChange::parse(&record, action_type, &none())
            .unwrap_err()
            .code
    }

    #[test]
    fn null_clears_a_field_and_counts_as_a_change() {
        use ActionType::{Create, Update, Upsert};
        let record = json!({"email": "a@b.co", "name": null, "age": null, "status": "lead"});
        let change = ContactChange::parse(&record, Update, &none()).unwrap();
        assert_eq!(change.fields.name, Some(FieldChange::Clear));
        assert_eq!(change.fields.age, Some(FieldChange::Clear));
        assert_eq!(change.fields.status, Some(FieldChange::Set("lead".into())));
        let only_clears = json!({"email": "a@b.co", "status": null});
        assert!(ContactChange::parse(&only_clears, Update, &none()).is_ok());
        assert!(ContactChange::parse(&only_clears, Upsert, &none()).is_ok());
        // A new contact has nothing to clear: the clears are dropped, the values kept.
        let created = ContactChange::parse(&record, Create, &none()).unwrap();
        assert_eq!(created.fields.name, None);
        assert_eq!(created.fields.age, None);
        assert_eq!(created.fields.status, Some(FieldChange::Set("lead".into())));
        // The key itself cannot be cleared.
        assert_eq!(
            code_of(json!({"email": null, "name": "x"}), Update),
            OutcomeCode::MissingEmail
        );
    }

    #[test]
    fn a_clear_survives_the_batch_payload_and_old_payloads_read_as_before() {
        let record = json!({"email": "a@b.co", "name": null, "age": 7});
        let change = ContactChange::parse(&record, ActionType::Upsert, &none()).unwrap();
        let stored = serde_json::to_value(&change).unwrap();
        assert_eq!(stored, json!({"email": "a@b.co", "name": null, "age": 7}));
        assert_eq!(
            serde_json::from_value::<ContactChange>(stored).unwrap(),
            change
        );
        // As a build before clearing wrote it: absent fields stay "leave as it is".
        let old: ContactChange =
            serde_json::from_value(json!({"email": "a@b.co", "status": "x"})).unwrap();
        assert_eq!(old.fields.name, None);
        assert_eq!(old.fields.status, Some(FieldChange::Set("x".into())));
    }

    fn account_fields() -> FieldIndex {
        let definitions = crate::fields::FieldDefinitions::parse(&json!({ "fields": [
            { "name": "tier", "type": "string", "enum": ["gold", "silver"] },
            { "name": "seats", "type": "integer", "min": 1 },
            { "name": "score", "type": "number" },
            { "name": "vip", "type": "boolean" },
            { "name": "since", "type": "date" },
            { "name": "tags", "type": "string[]" },
        ]}))
        .unwrap();
        FieldIndex::from(&definitions)
    }

    #[test]
    fn a_record_names_the_accounts_own_fields() {
        use crate::fields::CustomValue;
        use ActionType::{Create, Delete, Update};
        let fields = account_fields();
        let record = json!({
            "email": "a@b.co", "tier": "gold", "seats": 3, "score": 0.5, "vip": null,
            "since": "2026-01-02", "tags": {"add": ["vip"], "remove": ["trial"]},
        });
        let change = ContactChange::parse(&record, Update, &fields).unwrap();
        assert_eq!(
            change.custom.keys().collect::<Vec<_>>(),
            ["score", "seats", "since", "tags", "tier", "vip"]
        );
        assert_eq!(change.custom["vip"], CustomChange::Clear);
        assert_eq!(
            change.custom["tier"],
            CustomChange::Set(CustomValue::Text("gold".into()))
        );
        // A new contact: no clear, and the list starts with its adds.
        let created = ContactChange::parse(&record, Create, &fields).unwrap();
        assert!(!created.custom.contains_key("vip"));
        assert_eq!(
            created.custom["tags"],
            CustomChange::Set(CustomValue::TextList(vec!["vip".into()]))
        );
        assert!(ContactChange::parse(&record, Delete, &fields)
            .unwrap()
            .custom
            .is_empty());
        // Only custom fields make an update; undefined ones are still unknown.
        assert!(
            ContactChange::parse(&json!({"email": "a@b.co", "seats": 2}), Update, &fields).is_ok()
        );
        assert_eq!(
            ContactChange::parse(&json!({"email": "a@b.co", "seats": 2}), Update, &none())
                .unwrap_err()
                .code,
            OutcomeCode::UnknownField
        );
        assert_eq!(
            ContactChange::parse(&json!({"email": "a@b.co", "seats": 0}), Update, &fields)
                .unwrap_err()
                .code,
            OutcomeCode::InvalidValue
        );
        // The stored payload reads back the same.
        let stored = serde_json::to_value(&change).unwrap();
        assert_eq!(
            serde_json::from_value::<ContactChange>(stored).unwrap(),
            change
        );
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
            &none(),
        );
        assert_eq!(
            record,
            json!({"email": "a@b.co", "name": null, "age": null})
        );
    }

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
    fn record_rules() {
        use ActionType::*;
        assert_eq!(code_of(json!([1]), Update), OutcomeCode::NotAnObject);
        assert_eq!(
            code_of(json!({"name": "x"}), Upsert),
            OutcomeCode::MissingEmail
        );
        assert_eq!(
            code_of(json!({"email": 5}), Upsert),
            OutcomeCode::InvalidType
        );
        assert_eq!(
            code_of(json!({"email": "a@b.co", "$set": {}}), Upsert),
            OutcomeCode::ForbiddenFieldName
        );
        assert_eq!(
            code_of(json!({"email": "a@b.co", "a.b": 1}), Upsert),
            OutcomeCode::ForbiddenFieldName
        );
        assert_eq!(
            code_of(json!({"email": "a@b.co", "phone": "1"}), Upsert),
            OutcomeCode::UnknownField
        );
        assert_eq!(
            code_of(json!({"email": "a@b.co", "age": "12"}), Upsert),
            OutcomeCode::InvalidType
        );
        assert_eq!(
            code_of(json!({"email": "a@b.co", "age": 12.5}), Upsert),
            OutcomeCode::InvalidType
        );
        assert_eq!(
            code_of(json!({"email": "a@b.co", "age": 151}), Upsert),
            OutcomeCode::InvalidValue
        );
        assert_eq!(
            code_of(json!({"email": "a@b.co", "age": u64::MAX}), Upsert),
            OutcomeCode::InvalidValue
        );
        assert_eq!(
            code_of(json!({"email": "a@b.co", "name": {"$gt": ""}}), Upsert),
            OutcomeCode::InvalidType
        );
        assert_eq!(
            code_of(json!({"email": "a@b.co"}), Update),
            OutcomeCode::NoFieldsToUpdate
        );
    }

    #[test]
    fn control_characters_fail_with_invalid_characters() {
        use ActionType::*;
        for record in [
            json!({"email": "a@b.co", "name": "Ann\u{0}"}),
            json!({"email": "a@b.co", "status": "lead\u{1b}[31m"}),
            json!({"email": "a@b.co", "name": "C1 \u{85} next line"}),
            json!({"email": "a\u{0}b@b.co"}),
            json!({"email": "a@b.co", "na\u{0}me": "x"}),
            json!({"email": "a@b.co", "\nname": "x"}),
        ] {
            assert_eq!(code_of(record, Upsert), OutcomeCode::InvalidCharacters);
        }
        // Free text keeps its tabs and line breaks.
        let change = ContactChange::parse(
            &json!({"email": "a@b.co", "name": "Ann\tLee\r\nJr"}),
            Upsert,
            &none(),
        )
        .unwrap();
        assert_eq!(
            change.fields.name,
            Some(FieldChange::Set("Ann\tLee\r\nJr".to_owned()))
        );
        // Whitespace inside an email is still a malformed email.
        assert_eq!(
            Email::parse("tab\t@x.io").unwrap_err().code,
            OutcomeCode::InvalidEmail
        );
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
    fn a_huge_field_name_is_quoted_as_a_short_prefix() {
        let mut record = Map::new();
        record.insert("email".into(), json!("a@b.co"));
        record.insert("k".repeat(17_000_000), json!(1));
        let error =
            ContactChange::parse(&Value::Object(record), ActionType::Upsert, &none()).unwrap_err();
        assert_eq!(error.code, OutcomeCode::UnknownField);
        assert!(error.message.len() < 200, "{}", error.message.len());
        assert!(error.message.contains("\"kkkk") && error.message.contains('…'));
    }

    fn text_with_anything() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('\0'),
                Just('\t'),
                Just('\n'),
                Just('\u{85}'),
                Just('"'),
                Just('é'),
                Just('e'),
                Just('\u{301}'),
                any::<char>(),
            ],
            0..120,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn what_parses_holds_no_forbidden_control_and_messages_stay_bounded(
            key in text_with_anything(),
            name in text_with_anything(),
            email in text_with_anything(),
        ) {
            let mut object = Map::new();
            object.insert("email".into(), json!(format!("{email}@x.io")));
            object.insert("name".into(), json!(name));
            object.insert(key, json!("v"));
            match ContactChange::parse(&Value::Object(object), ActionType::Upsert, &none()) {
                Ok(change) => {
                    let name = change.fields.name.as_ref().and_then(FieldChange::value);
                    prop_assert!(!has_forbidden_control(name.map_or("", String::as_str), true));
                    prop_assert!(!change.email.as_str().chars().any(char::is_control));
                }
                Err(error) => prop_assert!(error.message.len() <= MESSAGE_MAX_BYTES),
            }
        }

        #[test]
        fn canonically_equivalent_emails_are_one_key(local in "[a-zA-Z\u{e0}-\u{ff}]{1,10}") {
            let nfd: String = local.nfd().collect();
            let composed = Email::parse(&format!("{local}@x.io"));
            let decomposed = Email::parse(&format!("{nfd}@x.io"));
            prop_assert_eq!(composed, decomposed);
        }
    }

    #[test]
    fn delete_keeps_only_the_key() {
        let change = ContactChange::parse(
            &json!({"email": "A@b.co", "name": "x"}),
            ActionType::Delete,
            &none(),
        )
        .unwrap();
        assert_eq!(change.email.as_str(), "a@b.co");
        assert!(change.fields.is_empty());
    }
}
