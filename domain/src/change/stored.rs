//! How a change is kept in a staged batch: `{"key", "naturalKey"?, "fields": {...}}`, each
//! field's change as the JSON a client writes (a value, `null` to clear, `{"add", "remove"}`
//! to edit a list), except a date, kept as `{"$date": <milliseconds>}` so that it reads back
//! as a date and not as text. A whole number is an integer, one written with a fraction or
//! exponent (`2.0`) a number.
//!
//! Batches staged by builds before the entity registry (contacts only) read as they meant:
//! `{"email", "name"?, "age"?, "status"?, "custom"?: {<field>: {"set": {"text": ..}}}}`.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::{FieldChanges, RecordChange};
use crate::fields::{FieldChange, FieldValue};

const DATE_TAG: &str = "$date";

impl Serialize for FieldChange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldChange::Set(value) => value.serialize(serializer),
            FieldChange::Clear => serializer.serialize_none(),
            FieldChange::Edit { add, remove } => {
                #[derive(Serialize)]
                struct Edit<'a> {
                    #[serde(skip_serializing_if = "<[String]>::is_empty")]
                    add: &'a [String],
                    #[serde(skip_serializing_if = "<[String]>::is_empty")]
                    remove: &'a [String],
                }
                Edit { add, remove }.serialize(serializer)
            }
        }
    }
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldValue::Text(text) => serializer.serialize_str(text),
            // Always with a fraction, so that it reads back as a number, not an integer.
            FieldValue::Number(number) => serializer.serialize_f64(*number),
            FieldValue::Integer(integer) => serializer.serialize_i64(*integer),
            FieldValue::Boolean(flag) => serializer.serialize_bool(*flag),
            FieldValue::Date(millis) => {
                let mut tagged = BTreeMap::new();
                tagged.insert(DATE_TAG, *millis);
                tagged.serialize(serializer)
            }
            FieldValue::TextList(items) => items.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for FieldChange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        change_from_json(Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

fn change_from_json(value: Value) -> Result<FieldChange, String> {
    Ok(match value {
        Value::Null => FieldChange::Clear,
        Value::String(text) => FieldChange::Set(FieldValue::Text(text)),
        Value::Bool(flag) => FieldChange::Set(FieldValue::Boolean(flag)),
        Value::Number(number) => match number.as_i64() {
            Some(integer) if !number.is_f64() => FieldChange::Set(FieldValue::Integer(integer)),
            _ => FieldChange::Set(FieldValue::Number(
                number.as_f64().ok_or("a number out of range")?,
            )),
        },
        Value::Array(items) => FieldChange::Set(FieldValue::TextList(texts(items)?)),
        Value::Object(mut object) => {
            if let Some(millis) = object.get(DATE_TAG).and_then(Value::as_i64) {
                return Ok(FieldChange::Set(FieldValue::Date(millis)));
            }
            let mut list = |key: &str| match object.remove(key) {
                None => Ok(Vec::new()),
                Some(Value::Array(items)) => texts(items),
                Some(_) => Err(format!("{key} is not a list")),
            };
            FieldChange::Edit {
                add: list("add")?,
                remove: list("remove")?,
            }
        }
    })
}

fn texts(items: Vec<Value>) -> Result<Vec<String>, String> {
    items
        .into_iter()
        .map(|item| match item {
            Value::String(text) => Ok(text),
            _ => Err("a list item is not text".to_owned()),
        })
        .collect()
}

impl Serialize for RecordChange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Stored<'a> {
            key: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            natural_key: Option<&'a str>,
            #[serde(skip_serializing_if = "FieldChanges::is_empty")]
            fields: &'a FieldChanges,
        }
        Stored {
            key: &self.key,
            natural_key: self.natural_key.as_deref(),
            fields: &self.fields,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RecordChange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut object = Map::<String, Value>::deserialize(deserializer)?;
        let text = |value: Option<Value>| match value {
            Some(Value::String(text)) => Ok(Some(text)),
            None => Ok(None),
            Some(_) => Err(D::Error::custom("a key is not text")),
        };
        if let Some(key) = text(object.remove("key"))? {
            let fields = match object.remove("fields") {
                Some(fields) => FieldChanges::deserialize(fields).map_err(D::Error::custom)?,
                None => FieldChanges::default(),
            };
            return Ok(RecordChange {
                key,
                natural_key: text(object.remove("naturalKey"))?,
                fields,
            });
        }
        legacy(object).map_err(D::Error::custom)
    }
}

/// A contact's change as builds before the entity registry staged it.
fn legacy(mut object: Map<String, Value>) -> Result<RecordChange, String> {
    let Some(Value::String(email)) = object.remove("email") else {
        return Err("a staged change has neither key nor email".into());
    };
    let mut fields = FieldChanges::default();
    for name in ["name", "age", "status"] {
        if let Some(value) = object.remove(name) {
            fields.insert(name.to_owned(), change_from_json(value)?);
        }
    }
    if let Some(custom) = object.remove("custom") {
        let custom: BTreeMap<String, LegacyChange> =
            serde_json::from_value(custom).map_err(|error| error.to_string())?;
        fields.extend(
            custom
                .into_iter()
                .map(|(name, change)| (name, change.into())),
        );
    }
    Ok(RecordChange {
        key: email,
        natural_key: None,
        fields,
    })
}

/// A custom field's change as the first build with custom fields tagged it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum LegacyChange {
    Set(LegacyValue),
    Clear,
    Edit {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum LegacyValue {
    Text(String),
    Number(f64),
    Integer(i64),
    Boolean(bool),
    Date(i64),
    TextList(Vec<String>),
}

impl From<LegacyChange> for FieldChange {
    fn from(change: LegacyChange) -> Self {
        match change {
            LegacyChange::Set(value) => FieldChange::Set(match value {
                LegacyValue::Text(text) => FieldValue::Text(text),
                LegacyValue::Number(number) => FieldValue::Number(number),
                LegacyValue::Integer(integer) => FieldValue::Integer(integer),
                LegacyValue::Boolean(flag) => FieldValue::Boolean(flag),
                LegacyValue::Date(millis) => FieldValue::Date(millis),
                LegacyValue::TextList(items) => FieldValue::TextList(items),
            }),
            LegacyChange::Clear => FieldChange::Clear,
            LegacyChange::Edit { add, remove } => FieldChange::Edit { add, remove },
        }
    }
}
