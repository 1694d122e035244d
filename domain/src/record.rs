//! One submitted record, validated and normalised. Anything that is not a known field with a
//! value of the right type is refused here, so nothing a client sends reaches a query or an
//! update document unchecked.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::action::ActionType;
use crate::outcome::OutcomeCode;

pub const EMAIL_MAX_LEN: usize = 254;
pub const NAME_MAX_CHARS: usize = 256;
pub const STATUS_MAX_CHARS: usize = 64;
pub const AGE_MAX: i64 = 150;

/// A normalised email: trimmed, lowercased, structurally plausible. The dedup key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, RecordError> {
        let normalised = raw.trim().to_lowercase();
        let invalid = |why: &str| RecordError::new(OutcomeCode::InvalidEmail, why);
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
        let labels_ok = domain
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
        if !domain.contains('.') || !labels_ok {
            return Err(invalid("email domain is not a valid host name"));
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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
    fn new(code: OutcomeCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The fields of a contact that bulk actions manage. `None` means "leave as it is".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl ContactFields {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.age.is_none() && self.status.is_none()
    }
}

/// A validated record: the key and the changes to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactChange {
    pub email: Email,
    #[serde(flatten)]
    pub fields: ContactFields,
}

/// The fields a record may have.
pub const KNOWN_FIELDS: [&str; 4] = ["email", "name", "age", "status"];

/// The JSON record a row of text cells stands for (a CSV row under its header): an empty
/// cell leaves its field out, as an absent JSON field does, and `age` is a number when
/// the cell is one. Anything else stays text, so that `ContactChange::parse` gives a bad
/// cell the same code as the same mistake in JSON.
pub fn record_from_cells<'a>(cells: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    let mut record = Map::new();
    for (field, cell) in cells {
        if cell.is_empty() {
            continue;
        }
        let value = match (field, cell.trim().parse::<i64>()) {
            ("age", Ok(number)) => Value::from(number),
            _ => Value::from(cell),
        };
        record.insert(field.to_owned(), value);
    }
    Value::Object(record)
}

impl ContactChange {
    pub fn parse(record: &Value, action_type: ActionType) -> Result<Self, RecordError> {
        let Value::Object(object) = record else {
            return Err(RecordError::new(
                OutcomeCode::NotAnObject,
                "record must be a JSON object",
            ));
        };
        check_field_names(object)?;
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
        match action_type {
            ActionType::Update if fields.is_empty() => Err(RecordError::new(
                OutcomeCode::NoFieldsToUpdate,
                "update needs at least one of name, age, status",
            )),
            // A delete is keyed by email alone; the fields were checked but carry no meaning.
            ActionType::Delete => Ok(Self {
                email,
                fields: ContactFields::default(),
            }),
            _ => Ok(Self { email, fields }),
        }
    }
}

fn check_field_names(object: &Map<String, Value>) -> Result<(), RecordError> {
    if let Some(key) = object
        .keys()
        .find(|key| key.starts_with('$') || key.contains('.') || key.contains('\0'))
    {
        return Err(RecordError::new(
            OutcomeCode::ForbiddenFieldName,
            format!("field name {key:?} may not start with '$' or contain '.'"),
        ));
    }
    if let Some(key) = object
        .keys()
        .find(|key| !KNOWN_FIELDS.contains(&key.as_str()))
    {
        return Err(RecordError::new(
            OutcomeCode::UnknownField,
            format!("unknown field {key:?}; known fields are email, name, age, status"),
        ));
    }
    Ok(())
}

fn bounded_string(
    object: &Map<String, Value>,
    field: &str,
    max_chars: usize,
) -> Result<Option<String>, RecordError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::String(text)) if text.chars().count() <= max_chars => Ok(Some(text.clone())),
        Some(Value::String(_)) => Err(RecordError::new(
            OutcomeCode::InvalidValue,
            format!("{field} must be at most {max_chars} characters"),
        )),
        Some(_) => Err(RecordError::new(
            OutcomeCode::InvalidType,
            format!("{field} must be a string"),
        )),
    }
}

fn age(object: &Map<String, Value>) -> Result<Option<i64>, RecordError> {
    match object.get("age") {
        None => Ok(None),
        Some(Value::Number(number)) => match number.as_i64() {
            Some(age) if (0..=AGE_MAX).contains(&age) => Ok(Some(age)),
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
    use serde_json::json;

    fn code_of(record: Value, action_type: ActionType) -> OutcomeCode {
        ContactChange::parse(&record, action_type).unwrap_err().code
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
    fn delete_keeps_only_the_key() {
        let change =
            ContactChange::parse(&json!({"email": "A@b.co", "name": "x"}), ActionType::Delete)
                .unwrap();
        assert_eq!(change.email.as_str(), "a@b.co");
        assert!(change.fields.is_empty());
    }
}
