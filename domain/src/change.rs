//! One submitted record, validated against its action's rules and turned into the change
//! to make: the key that finds its document and what it does to each field it names.
//! Anything that is not a known field with a value of the right type is refused here, so
//! nothing a client sends reaches a query or an update document unchecked.

use serde_json::{Map, Value};

use crate::action::ActionType;
use crate::entity::{EntitySpec, EntityType};
use crate::fields::{FieldDefinitions, FieldIndex};
use crate::key::MatchBy;
use crate::outcome::OutcomeCode;
use crate::record::{has_forbidden_control, RecordError};
use crate::text::{bounded, quoted, RAW_EMAIL_MAX_BYTES};

mod changes;
mod stored;

pub use changes::{FieldChanges, FieldName};

/// What every record of an action is checked against, fixed when it is submitted.
#[derive(Debug, Clone)]
pub struct RecordRules {
    pub entity: EntityType,
    pub action_type: ActionType,
    pub match_by: MatchBy,
    /// The entity's built-in fields and the account's own, as defined at submission.
    pub fields: FieldIndex,
}

/// A validated record.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordChange {
    /// The normalised value of the key the action matches by (`MatchBy::key_of`).
    pub key: String,
    /// The natural key of a record that is matched by an external id and may create its
    /// document (`upsert`): written only on insert, never changed on an existing document.
    pub natural_key: Option<String>,
    /// What the record does to each field it names besides the key, by name.
    pub fields: FieldChanges,
}

impl RecordRules {
    /// Contacts matched by email with only their built-in fields: the rules of every action
    /// before the entity registry, and the default of tests and tools.
    pub fn contacts(action_type: ActionType) -> Self {
        Self::new(
            EntityType::Contact,
            action_type,
            MatchBy::Natural,
            &FieldDefinitions::default(),
        )
    }

    pub fn new(
        entity: EntityType,
        action_type: ActionType,
        match_by: MatchBy,
        custom: &FieldDefinitions,
    ) -> Self {
        Self {
            entity,
            action_type,
            match_by,
            fields: FieldIndex::new(entity, custom),
        }
    }

    pub fn spec(&self) -> &'static EntitySpec {
        self.entity.spec()
    }

    /// The fields a record of this action may name, the required ones first: what a CSV
    /// header may hold. Not the natural key where it cannot be written (matched by
    /// another key, except an upsert by an external id, which needs it), nor a unique
    /// field the action does not match by; a delete reads only its key, so any known
    /// column may come along.
    pub fn columns(&self) -> Vec<String> {
        let spec = self.spec();
        let key = self.match_by.record_field(spec);
        let deleting = self.action_type == ActionType::Delete;
        let mut columns = self.required_columns();
        if !columns.iter().any(|column| column == spec.natural_key) && deleting {
            columns.push(spec.natural_key.to_owned());
        }
        columns.extend(
            self.fields
                .names()
                .filter(|name| *name != key)
                .filter(|name| deleting || !self.fields.get(name).is_some_and(|f| f.unique))
                .map(str::to_owned),
        );
        columns
    }

    /// The columns every row needs: the key, and the natural key of an upsert by an
    /// external id (it creates with it).
    pub fn required_columns(&self) -> Vec<String> {
        let spec = self.spec();
        let key = self.match_by.record_field(spec);
        let mut required = vec![key.to_owned()];
        if matches!(self.match_by, MatchBy::ExternalId { .. })
            && self.action_type == ActionType::Upsert
        {
            required.push(spec.natural_key.to_owned());
        }
        required
    }

    /// For the log line of a rejected record: what it held as key, if it was text, bounded
    /// like every echo.
    pub fn raw_key(&self, record: &Value) -> Option<String> {
        record
            .get(self.match_by.record_field(self.spec()))
            .and_then(Value::as_str)
            .map(|raw| bounded(raw, RAW_EMAIL_MAX_BYTES))
    }
}

impl RecordChange {
    pub fn parse(record: &Value, rules: &RecordRules) -> Result<Self, RecordError> {
        let Value::Object(object) = record else {
            return Err(RecordError::new(
                OutcomeCode::NotAnObject,
                "record must be a JSON object",
            ));
        };
        let spec = rules.spec();
        let key_field = rules.match_by.record_field(spec);
        check_field_names(object, rules, key_field)?;
        let key = rules.match_by.key_of(spec, object.get(key_field))?;
        if let MatchBy::ExternalId { field, .. } = &rules.match_by {
            // The key is also the field's value: its definition's limits hold.
            if let (Some(definition), Some(value)) = (rules.fields.get(field), object.get(field)) {
                definition.check(value)?;
            }
        }
        let natural_key = natural_key(object, rules)?;
        let mut fields = FieldChanges::default();
        for (name, value) in object {
            if name == key_field || name == spec.natural_key {
                continue;
            }
            if let Some((shared_name, definition)) = rules.fields.get_named(name) {
                if definition.unique && rules.action_type != ActionType::Delete {
                    return Err(unique_elsewhere(name, rules));
                }
                fields.insert(shared_name.clone(), definition.check(value)?);
            }
        }
        match rules.action_type {
            ActionType::Update if fields.is_empty() => Err(RecordError::new(
                OutcomeCode::NoFieldsToUpdate,
                format!(
                    "update needs at least one field besides {key_field} (a value, or null \
                     to clear it)"
                ),
            )),
            // A delete is keyed alone; the fields were checked but carry no meaning.
            ActionType::Delete => Ok(Self {
                key,
                natural_key: None,
                fields: FieldChanges::default(),
            }),
            // A new document has nothing to clear, and a list it edits starts with the adds.
            ActionType::Create => Ok(Self {
                key,
                natural_key,
                fields: fields
                    .into_iter()
                    .filter_map(|(name, change)| Some((name, change.on_insert()?)))
                    .collect(),
            }),
            _ => Ok(Self {
                key,
                natural_key,
                fields,
            }),
        }
    }
}

/// A record matched by another key may name the natural key only where it can create a
/// document (upsert by an external id), which needs one; changing the natural key of an
/// existing document is not a bulk update's to do (it could collide with another one).
fn natural_key(
    object: &Map<String, Value>,
    rules: &RecordRules,
) -> Result<Option<String>, RecordError> {
    let spec = rules.spec();
    let value = object.get(spec.natural_key);
    match (&rules.match_by, rules.action_type) {
        (MatchBy::Natural, _) | (_, ActionType::Delete) => Ok(None),
        (MatchBy::ExternalId { .. }, ActionType::Upsert) => {
            MatchBy::Natural.key_of(spec, value).map(Some)
        }
        _ if value.is_some() => Err(RecordError::new(
            OutcomeCode::ImmutableField,
            format!(
                "{} identifies the {} and cannot be changed by an action matched by {}; \
                 leave it out",
                spec.natural_key,
                spec.entity_type.as_str(),
                rules.match_by.as_text()
            ),
        )),
        _ => Ok(None),
    }
}

/// An external id is written only by an action that matches by it (an upsert creates it):
/// set by another key it could collide with another document's, and one refused statement
/// refuses the batch's whole command on some servers (FerretDB).
fn unique_elsewhere(name: &str, rules: &RecordRules) -> RecordError {
    RecordError::new(
        OutcomeCode::ImmutableField,
        format!(
            "{name} is a unique external id: only an action with matchBy \
             externalId:{name} writes it (an upsert, when it creates the {})",
            rules.entity.as_str()
        ),
    )
}

fn check_field_names(
    object: &Map<String, Value>,
    rules: &RecordRules,
    key_field: &str,
) -> Result<(), RecordError> {
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
    let spec = rules.spec();
    let known = |name: &str| {
        name == key_field || name == spec.natural_key || rules.fields.get(name).is_some()
    };
    if let Some(key) = object.keys().find(|key| !known(key)) {
        let built_in: Vec<&str> = spec.field_names().collect();
        return Err(RecordError::new(
            OutcomeCode::UnknownField,
            format!(
                "unknown field {}; a {} has {} and the account's own fields (GET /fields/{})",
                quoted(key),
                spec.entity_type.as_str(),
                built_in.join(", "),
                spec.entity_type.as_str()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
