//! Custom fields an account defines for an entity type, and the check of a record's value
//! against its definition (issue 15). What is allowed is decided here, from the definition
//! alone, so that the api at submission and a replay of a recorded definition agree.
//!
//! A definition is `{"fields": [{"name", "type", "maxLength"?, "min"?, "max"?, "enum"?}]}`.
//! A value is checked into a `FieldChange`: a value to set, `null` to clear, or, for a
//! `string[]` field, `{"add": [...], "remove": [...]}` to change the list in place.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::change::FieldName;
use crate::entity::{BuiltInField, EntityType};
use crate::outcome::OutcomeCode;
use crate::record::RecordError;
use crate::text::{bounded, quoted, MESSAGE_MAX_BYTES};
use crate::time::Timestamp;

/// Field names no account may define for any entity type, besides the entity's own natural
/// key and built-in fields: what the platform keeps on every document (a record naming
/// `createdByBulkAction` could forge another action's provenance, which retries and
/// dead-letter reconciliation rely on; `deletingByBulkAction` marks what a delete batch is
/// about to remove), the key `matchBy: id` reads, and `externalId`, the
/// natural key of opportunities and tasks.
pub const PLATFORM_NAMES: [&str; 8] = [
    "_id",
    "id",
    "accountId",
    "createdAt",
    "updatedAt",
    "createdByBulkAction",
    "deletingByBulkAction",
    "externalId",
];
pub const MAX_FIELDS: usize = 100;
/// The keys a field's definition may have.
const FIELD_KEYS: [&str; 8] = [
    "name",
    "type",
    "maxLength",
    "min",
    "max",
    "enum",
    "unique",
    "slot",
];
/// Unique fields (external ids) an account may have per entity type, ever: each is bound
/// for good to one of the entity's platform-owned slots (`slot_field`), each with its own
/// unique index made at the consumer's start. Another account's fields of the same name
/// are not indexed (decision 0051).
pub const MAX_UNIQUE_FIELDS: usize = 3;

/// The document field that holds the values of an account's unique field bound to `slot`
/// (1 to `MAX_UNIQUE_FIELDS`): `_externalId1`, ... No account field starts with `_`.
pub fn slot_field(slot: u8) -> String {
    format!("_externalId{slot}")
}
pub const NAME_MAX_CHARS: usize = 64;
/// The longest text any field may hold, whatever its `maxLength`.
pub const TEXT_MAX_CHARS: u32 = 10_000;
pub const LIST_MAX_ITEMS: usize = 100;
pub const ENUM_MAX_VALUES: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FieldType {
    #[serde(rename = "string")]
    Text,
    #[serde(rename = "number")]
    Number,
    #[serde(rename = "integer")]
    Integer,
    #[serde(rename = "boolean")]
    Boolean,
    /// An RFC 3339 instant or a `YYYY-MM-DD` day (midnight UTC).
    #[serde(rename = "date")]
    Date,
    #[serde(rename = "string[]")]
    TextList,
}

/// One field as an account defined it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldDefinition {
    /// A letter, then up to 63 letters, digits or `_`; not a built-in field's name.
    #[cfg_attr(feature = "openapi", schema(example = "tier"))]
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Characters of a text, or of each item of a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_written"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_written"
    )]
    pub max: Option<f64>,
    /// The values allowed (of a text, a number, an integer, or each item of a list).
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub allowed: Option<Vec<Value>>,
    /// An external id: no two of the account's records share a value, and actions may
    /// match by it (`matchBy: externalId:<name>`). `string` fields only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unique: bool,
    /// The platform's slot this unique field's values are kept and indexed in (assigned at
    /// `PUT`, for good; a value sent is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u8>,
}

/// An account's fields for one entity type, by name.
/// Read leniently (a copy in Redis or in an event written by a later build may hold keys
/// this one does not know); what an account sends is checked strictly by `parse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldDefinitions {
    pub fields: Vec<FieldDefinition>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DefinitionError {
    /// The field's name, or `fields` for the definition as a whole.
    pub field: String,
    pub message: String,
}

/// What a record does to one field. Stored in batches as the JSON a client writes
/// (`change::stored`).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldChange {
    Set(FieldValue),
    Clear,
    /// A list changed in place: `remove` taken out, then `add` put in where missing.
    Edit {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Text(String),
    Number(f64),
    Integer(i64),
    Boolean(bool),
    /// Milliseconds since the epoch.
    Date(i64),
    TextList(Vec<String>),
}

/// The fields a record of an action may name, by name: the entity's built-in fields and
/// the account's own. Built once per submission.
#[derive(Debug, Clone)]
pub struct FieldIndex {
    /// The entity's built-in fields in their declared order, then the account's.
    fields: Vec<FieldDefinition>,
    /// Each of `fields`' name, shared with every record's changes that name it.
    names: Vec<FieldName>,
    /// How many of `fields` are built in: found by comparing names, which for a handful
    /// is quicker than hashing one (every field of every record is looked up).
    built_in: usize,
    /// The account's fields, by name, to their place in `fields`.
    custom: HashMap<String, usize>,
}

impl FieldIndex {
    /// The entity's built-in fields and `custom`, the account's definition in force.
    pub fn new(entity: EntityType, custom: &FieldDefinitions) -> Self {
        let built_in: Vec<FieldDefinition> = entity
            .spec()
            .fields
            .iter()
            .map(FieldDefinition::from)
            .collect();
        let count = built_in.len();
        let fields: Vec<FieldDefinition> = built_in
            .into_iter()
            .chain(custom.fields.iter().cloned())
            .collect();
        Self {
            custom: fields
                .iter()
                .enumerate()
                .skip(count)
                .map(|(place, field)| (field.name.clone(), place))
                .collect(),
            built_in: count,
            names: fields
                .iter()
                .map(|field| FieldName::from(&*field.name))
                .collect(),
            fields,
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|field| field.name.as_str())
    }

    /// The entity's built-in fields alone.
    pub fn built_in(entity: EntityType) -> Self {
        Self::new(entity, &FieldDefinitions::default())
    }

    pub fn get(&self, name: &str) -> Option<&FieldDefinition> {
        self.get_named(name).map(|(_, field)| field)
    }

    /// The field and its shared name.
    pub fn get_named(&self, name: &str) -> Option<(&FieldName, &FieldDefinition)> {
        let place = match self.fields[..self.built_in]
            .iter()
            .position(|field| field.name == name)
        {
            Some(place) => place,
            None if self.custom.is_empty() => return None,
            None => *self.custom.get(name)?,
        };
        Some((&self.names[place], &self.fields[place]))
    }
}

impl From<&BuiltInField> for FieldDefinition {
    fn from(field: &BuiltInField) -> Self {
        Self {
            name: field.name.to_owned(),
            field_type: field.field_type,
            max_length: field.max_length,
            min: field.min,
            max: field.max,
            allowed: (!field.allowed.is_empty()).then(|| {
                field
                    .allowed
                    .iter()
                    .map(|value| Value::from(*value))
                    .collect()
            }),
            unique: false,
            slot: None,
        }
    }
}

impl FieldChange {
    /// The change as a new document takes it: nothing to clear, and an edited list starts
    /// with its adds.
    pub fn on_insert(&self) -> Option<FieldChange> {
        match self {
            FieldChange::Set(value) => Some(FieldChange::Set(value.clone())),
            FieldChange::Clear => None,
            FieldChange::Edit { add, .. } if add.is_empty() => None,
            FieldChange::Edit { add, .. } => {
                Some(FieldChange::Set(FieldValue::TextList(add.clone())))
            }
        }
    }
}

impl FieldDefinitions {
    /// A definition as an account sends it, checked whole: any mistake refuses all of it.
    pub fn parse(raw: &Value, entity: EntityType) -> Result<Self, DefinitionError> {
        let whole = |message: String| DefinitionError {
            field: "fields".into(),
            message,
        };
        let unknown_key = |value: &Value, known: &[&str]| match value {
            Value::Object(object) => object
                .keys()
                .find(|key| !known.contains(&key.as_str()))
                .map(|key| format!("unknown field {}", quoted(key))),
            _ => None,
        };
        if let Some(unknown) = unknown_key(raw, &["fields"]) {
            return Err(whole(unknown));
        }
        if let Some(Value::Array(fields)) = raw.get("fields") {
            if let Some(unknown) = fields.iter().find_map(|f| unknown_key(f, &FIELD_KEYS)) {
                return Err(whole(unknown));
            }
        }
        let mut definitions: FieldDefinitions = serde_json::from_value(raw.clone())
            .map_err(|error| whole(bounded(&error.to_string(), MESSAGE_MAX_BYTES)))?;
        // Slots are the platform's to assign.
        for field in &mut definitions.fields {
            field.slot = None;
        }
        if definitions.fields.len() > MAX_FIELDS {
            return Err(whole(format!("at most {MAX_FIELDS} fields")));
        }
        if definitions
            .fields
            .iter()
            .filter(|field| field.unique)
            .count()
            > MAX_UNIQUE_FIELDS
        {
            return Err(whole(format!(
                "at most {MAX_UNIQUE_FIELDS} unique fields per entity type"
            )));
        }
        let mut names = BTreeSet::new();
        for field in &definitions.fields {
            field.check_itself(entity)?;
            if !names.insert(field.name.to_lowercase()) {
                return Err(field.error("is defined twice (names are compared ignoring case)"));
            }
        }
        Ok(definitions)
    }

    pub fn get(&self, name: &str) -> Option<&FieldDefinition> {
        self.fields.iter().find(|field| field.name == name)
    }
}

impl FieldDefinition {
    fn error(&self, message: impl Into<String>) -> DefinitionError {
        DefinitionError {
            field: self.name.clone(),
            message: message.into(),
        }
    }

    fn check_itself(&self, entity: EntityType) -> Result<(), DefinitionError> {
        if !is_field_name(&self.name) {
            return Err(DefinitionError {
                field: self.name.chars().take(NAME_MAX_CHARS).collect(),
                message: "a name is a letter then up to 63 letters, digits or '_'".into(),
            });
        }
        if let Some(reserved) = PLATFORM_NAMES
            .into_iter()
            .chain(entity.spec().field_names())
            .find(|reserved| reserved.eq_ignore_ascii_case(&self.name))
        {
            return Err(self.error(format!(
                "is reserved: {reserved} is a built-in field of every {} or kept by the platform",
                entity.as_str()
            )));
        }
        self.check_itself_as_built_in()
    }

    /// The checks a built-in field's declaration passes too: all but the reserved names.
    pub(crate) fn check_itself_as_built_in(&self) -> Result<(), DefinitionError> {
        if self.unique && self.field_type != FieldType::Text {
            return Err(self.error("unique applies to string fields"));
        }
        let textual = matches!(self.field_type, FieldType::Text | FieldType::TextList);
        let numeric = matches!(self.field_type, FieldType::Number | FieldType::Integer);
        if self.max_length.is_some() && !textual {
            return Err(self.error("maxLength applies to string and string[] fields"));
        }
        if self
            .max_length
            .is_some_and(|max| max == 0 || max > TEXT_MAX_CHARS)
        {
            return Err(self.error(format!("maxLength is 1 to {TEXT_MAX_CHARS}")));
        }
        if (self.min.is_some() || self.max.is_some()) && !numeric {
            return Err(self.error("min and max apply to number and integer fields"));
        }
        if [self.min, self.max]
            .into_iter()
            .flatten()
            .any(|b| !b.is_finite())
        {
            return Err(self.error("min and max are finite numbers"));
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                return Err(self.error("min is above max"));
            }
        }
        if let Some(allowed) = &self.allowed {
            if matches!(self.field_type, FieldType::Boolean | FieldType::Date) {
                return Err(self.error("enum applies to string, number, integer and string[]"));
            }
            if allowed.is_empty() || allowed.len() > ENUM_MAX_VALUES {
                return Err(self.error(format!("enum has 1 to {ENUM_MAX_VALUES} values")));
            }
            let unconstrained = FieldDefinition {
                allowed: None,
                field_type: match self.field_type {
                    FieldType::TextList => FieldType::Text,
                    other => other,
                },
                ..self.clone()
            };
            for value in allowed {
                if unconstrained.scalar(value).is_err() {
                    return Err(self.error(format!(
                        "enum value {} does not fit the field",
                        quoted(&value.to_string())
                    )));
                }
            }
        }
        Ok(())
    }

    /// A record's value for this field: what to do with it, or why the record fails.
    pub fn check(&self, value: &Value) -> Result<FieldChange, RecordError> {
        match (self.field_type, value) {
            (_, Value::Null) => Ok(FieldChange::Clear),
            (FieldType::TextList, Value::Array(items)) => {
                Ok(FieldChange::Set(FieldValue::TextList(self.items(items)?)))
            }
            (FieldType::TextList, Value::Object(edit)) => self.edit(edit),
            (FieldType::TextList, _) => {
                Err(self
                    .wrong_type("a list of strings, {\"add\": [...], \"remove\": [...]}, or null"))
            }
            _ => self.scalar(value).map(FieldChange::Set),
        }
    }

    fn scalar(&self, value: &Value) -> Result<FieldValue, RecordError> {
        let checked = match (self.field_type, value) {
            (FieldType::Text | FieldType::TextList, Value::String(text)) => {
                let max = self.max_length.unwrap_or(TEXT_MAX_CHARS);
                if text.chars().count() > max as usize {
                    return Err(self.invalid(format!("is longer than {max} characters")));
                }
                if text
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
                {
                    return Err(RecordError::new(
                        OutcomeCode::InvalidCharacters,
                        format!("{} contains a control character", self.name),
                    ));
                }
                FieldValue::Text(text.clone())
            }
            (FieldType::Integer, Value::Number(number)) => match number.as_i64() {
                Some(integer) => {
                    self.within(integer as f64)?;
                    FieldValue::Integer(integer)
                }
                // A whole number beyond i64 is an integer out of any range a field allows.
                None if number.is_u64() => return Err(self.invalid("is too large")),
                None => return Err(self.wrong_type("an integer")),
            },
            (FieldType::Number, Value::Number(number)) => match number.as_f64() {
                Some(float) if float.is_finite() => {
                    self.within(float)?;
                    FieldValue::Number(float)
                }
                _ => return Err(self.wrong_type("a finite number")),
            },
            (FieldType::Boolean, Value::Bool(flag)) => FieldValue::Boolean(*flag),
            (FieldType::Date, Value::String(text)) => match date_millis(text) {
                Some(millis) => FieldValue::Date(millis),
                None => return Err(self.invalid("is not an RFC 3339 instant or a YYYY-MM-DD day")),
            },
            _ => return Err(self.wrong_type(self.expected())),
        };
        if let Some(allowed) = &self.allowed {
            if !allowed.iter().any(|one| same_value(one, value)) {
                return Err(self.invalid("is not one of the values its enum allows"));
            }
        }
        Ok(checked)
    }

    fn items(&self, items: &[Value]) -> Result<Vec<String>, RecordError> {
        if items.len() > LIST_MAX_ITEMS {
            return Err(self.invalid(format!("has more than {LIST_MAX_ITEMS} items")));
        }
        let mut texts = Vec::with_capacity(items.len());
        for item in items {
            match self.scalar(item)? {
                FieldValue::Text(text) if !texts.contains(&text) => texts.push(text),
                FieldValue::Text(_) => {}
                _ => return Err(self.wrong_type("a list of strings")),
            }
        }
        Ok(texts)
    }

    fn edit(&self, edit: &serde_json::Map<String, Value>) -> Result<FieldChange, RecordError> {
        if let Some(key) = edit
            .keys()
            .find(|key| !matches!(key.as_str(), "add" | "remove"))
        {
            return Err(self.wrong_type(format!("add and remove only, not {}", quoted(key))));
        }
        let list = |key: &str| match edit.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => self.items(items),
            Some(_) => Err(self.wrong_type(format!("{key} as a list of strings"))),
        };
        let (add, remove) = (list("add")?, list("remove")?);
        if add.is_empty() && remove.is_empty() {
            return Err(self.invalid("adds and removes nothing"));
        }
        if add.iter().any(|item| remove.contains(item)) {
            return Err(self.invalid("adds and removes the same value"));
        }
        Ok(FieldChange::Edit { add, remove })
    }

    fn within(&self, number: f64) -> Result<(), RecordError> {
        if self.min.is_some_and(|min| number < min) || self.max.is_some_and(|max| number > max) {
            return Err(self.invalid(format!(
                "is outside {}..{}",
                self.min.map_or("".into(), |min| min.to_string()),
                self.max.map_or("".into(), |max| max.to_string())
            )));
        }
        Ok(())
    }

    fn expected(&self) -> &'static str {
        match self.field_type {
            FieldType::Text | FieldType::TextList => "a string",
            FieldType::Number => "a finite number",
            FieldType::Integer => "an integer",
            FieldType::Boolean => "true or false",
            FieldType::Date => "a date string",
        }
    }

    fn wrong_type(&self, expected: impl AsRef<str>) -> RecordError {
        RecordError::new(
            OutcomeCode::InvalidType,
            format!("{} must be {} (or null)", self.name, expected.as_ref()),
        )
    }

    fn invalid(&self, why: impl AsRef<str>) -> RecordError {
        RecordError::new(
            OutcomeCode::InvalidValue,
            format!("{} {}", self.name, why.as_ref()),
        )
    }
}

/// A bound as it was most likely written: a whole number without a fraction (`1`, not `1.0`).
fn as_written<S: serde::Serializer>(bound: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    match bound {
        Some(whole) if whole.fract() == 0.0 && whole.abs() < 9.0e15 => {
            serializer.serialize_some(&(*whole as i64))
        }
        other => other.serialize(serializer),
    }
}

fn is_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && name.len() <= NAME_MAX_CHARS
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Numbers compare by value (`1` is `1.0`), anything else as JSON.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => a == b,
    }
}

fn date_millis(text: &str) -> Option<i64> {
    let day = text.len() == 10 && text.as_bytes().get(4) == Some(&b'-');
    let instant = if day {
        Timestamp::parse_rfc3339(&format!("{text}T00:00:00Z"))
    } else {
        Timestamp::parse_rfc3339(text)
    };
    instant.map(|at| at.millis())
}

#[cfg(test)]
pub(crate) mod tests;
