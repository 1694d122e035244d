//! Which field a bulk action finds its documents by (`matchBy`), and how a record's value
//! for it is read: the entity's natural key (the default), the document id, or an
//! account-defined external id field. Dedup within an action is by the same key.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::action::ActionType;
use crate::entity::{EntitySpec, EntityType, KeyKind, EXTERNAL_ID_MAX_CHARS};
use crate::fields::{slot_field, FieldDefinitions};
use crate::outcome::OutcomeCode;
use crate::record::{Email, RecordError};
use crate::text::quoted;

/// The field an action matches its records to documents by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum MatchBy {
    /// The entity's natural key (`EntitySpec::natural_key`): email, domain, external id.
    #[default]
    Natural,
    /// The document's `_id`: 24 hexadecimal digits are an ObjectId, anything else a string.
    Id,
    /// An account-defined unique `string` field, and the platform slot its values are
    /// kept and indexed in (`fields::slot_field`).
    ExternalId { field: String, slot: u8 },
}

/// The prefix of an external id field in `matchBy` (`externalId:sfId`).
pub const EXTERNAL_ID_PREFIX: &str = "externalId:";
/// `matchBy: id` reads the record's `id` field.
pub const ID_FIELD: &str = "id";
/// The document field `matchBy: id` matches.
pub const DOCUMENT_ID: &str = "_id";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MatchByError(pub String);

impl MatchBy {
    /// `matchBy` as a client writes it: `natural` or the natural key's name (`email`),
    /// `id`, or `externalId:<field>` naming a `string` field of the account's definition.
    pub fn parse(
        raw: &str,
        entity: EntityType,
        custom: &FieldDefinitions,
    ) -> Result<Self, MatchByError> {
        let spec = entity.spec();
        if raw == "natural" || raw == spec.natural_key {
            return Ok(MatchBy::Natural);
        }
        if raw == ID_FIELD {
            return Ok(MatchBy::Id);
        }
        let Some(field) = raw.strip_prefix(EXTERNAL_ID_PREFIX) else {
            return Err(MatchByError(format!(
                "matchBy {} is not one of {}, id or externalId:<field>",
                quoted(raw),
                spec.natural_key
            )));
        };
        match custom.get(field) {
            Some(definition) if definition.unique => match definition.slot {
                Some(slot) => Ok(MatchBy::ExternalId {
                    field: field.to_owned(),
                    slot,
                }),
                None => Err(MatchByError(format!(
                    "matchBy {}: the field has no slot yet; PUT /fields/{} again",
                    quoted(raw),
                    entity.as_str()
                ))),
            },
            Some(_) => Err(MatchByError(format!(
                "matchBy {}: an external id field is a string field defined with \
                 \"unique\": true",
                quoted(raw)
            ))),
            None => Err(MatchByError(format!(
                "matchBy {}: the account defines no {} field {} (PUT /fields/{})",
                quoted(raw),
                entity.as_str(),
                quoted(field),
                entity.as_str()
            ))),
        }
    }

    pub fn is_natural(&self) -> bool {
        *self == MatchBy::Natural
    }

    /// As a client writes it and views show it: `natural`, `id`, `externalId:<field>`.
    pub fn as_text(&self) -> Cow<'static, str> {
        match self {
            MatchBy::Natural => Cow::Borrowed("natural"),
            MatchBy::Id => Cow::Borrowed(ID_FIELD),
            MatchBy::ExternalId { field, .. } => Cow::Owned(format!("{EXTERNAL_ID_PREFIX}{field}")),
        }
    }

    /// Whether an action of `action_type` may match by this key. A document id cannot
    /// create a document (the store makes ids), and `create` dedups by the natural key.
    pub fn allows(&self, action_type: ActionType) -> bool {
        match self {
            MatchBy::Natural => true,
            MatchBy::Id => matches!(action_type, ActionType::Update | ActionType::Delete),
            MatchBy::ExternalId { .. } => action_type != ActionType::Create,
        }
    }

    /// The field of a record that holds the key.
    pub fn record_field<'a>(&'a self, spec: &'static EntitySpec) -> &'a str {
        match self {
            MatchBy::Natural => spec.natural_key,
            MatchBy::Id => ID_FIELD,
            MatchBy::ExternalId { field, .. } => field,
        }
    }

    /// The field of a document that holds the key: an external id is matched in its slot.
    pub fn document_field(&self, spec: &'static EntitySpec) -> Cow<'static, str> {
        match self {
            MatchBy::Natural => Cow::Borrowed(spec.natural_key),
            MatchBy::Id => Cow::Borrowed(DOCUMENT_ID),
            MatchBy::ExternalId { slot, .. } => Cow::Owned(slot_field(*slot)),
        }
    }

    /// The code of a record whose key an earlier record of the action already has.
    pub fn duplicate_code(&self, spec: &'static EntitySpec) -> OutcomeCode {
        match (self, spec.key_kind) {
            (MatchBy::Natural, KeyKind::Email) => OutcomeCode::DuplicateEmail,
            (MatchBy::Natural, KeyKind::Domain) => OutcomeCode::DuplicateDomain,
            (MatchBy::Natural, KeyKind::ExternalId) | (MatchBy::ExternalId { .. }, _) => {
                OutcomeCode::DuplicateExternalId
            }
            (MatchBy::Id, _) => OutcomeCode::DuplicateId,
        }
    }

    /// A record's key, normalised: what dedup compares and the consumer matches.
    pub fn key_of(
        &self,
        spec: &'static EntitySpec,
        value: Option<&Value>,
    ) -> Result<String, RecordError> {
        let field = self.record_field(spec);
        let kind = match self {
            MatchBy::Natural => Some(spec.key_kind),
            MatchBy::Id => None,
            MatchBy::ExternalId { .. } => Some(KeyKind::ExternalId),
        };
        let raw = match value {
            None | Some(Value::Null) if kind == Some(KeyKind::Email) => {
                return Err(RecordError::new(
                    OutcomeCode::MissingEmail,
                    format!("{field} is required"),
                ))
            }
            None | Some(Value::Null) => {
                return Err(RecordError::new(
                    OutcomeCode::MissingKey,
                    format!("{field} is required: the action matches by it"),
                ))
            }
            Some(Value::String(raw)) => raw,
            Some(_) => {
                return Err(RecordError::new(
                    OutcomeCode::InvalidType,
                    format!("{field} must be a string"),
                ))
            }
        };
        match kind {
            Some(KeyKind::Email) => Email::parse(raw).map(|email| email.as_str().to_owned()),
            Some(KeyKind::Domain) => domain(raw),
            Some(KeyKind::ExternalId) => opaque(field, raw),
            None => document_id(raw),
        }
    }
}

/// Stored as text: `natural`, `id`, `externalId:<field>@<slot>`.
impl Serialize for MatchBy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MatchBy::ExternalId { field, slot } => {
                serializer.serialize_str(&format!("{EXTERNAL_ID_PREFIX}{field}@{slot}"))
            }
            other => serializer.serialize_str(&other.as_text()),
        }
    }
}

impl<'de> Deserialize<'de> for MatchBy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.as_str() {
            "natural" => MatchBy::Natural,
            ID_FIELD => MatchBy::Id,
            other => match other
                .strip_prefix(EXTERNAL_ID_PREFIX)
                .and_then(|rest| rest.rsplit_once('@'))
                .and_then(|(field, slot)| Some((field, slot.parse::<u8>().ok()?)))
            {
                Some((field, slot)) => MatchBy::ExternalId {
                    field: field.to_owned(),
                    slot,
                },
                None => {
                    return Err(serde::de::Error::custom(format!(
                        "unknown matchBy {}",
                        quoted(other)
                    )))
                }
            },
        })
    }
}

fn invalid_key(message: String) -> RecordError {
    RecordError::new(OutcomeCode::InvalidKey, message)
}

/// A company's domain: a host name, lowercased, without a trailing dot. `https://` or a
/// path is refused rather than guessed away: a key must mean one thing.
fn domain(raw: &str) -> Result<String, RecordError> {
    let trimmed = raw.trim();
    if trimmed.len() > 4 * crate::record::DOMAIN_MAX_CHARS {
        return Err(invalid_key("domain is longer than 253 characters".into()));
    }
    let normalised: String = trimmed.to_lowercase().nfc().collect();
    let normalised = normalised
        .strip_suffix('.')
        .unwrap_or(&normalised)
        .to_owned();
    if !crate::record::is_host_name(&normalised) {
        return Err(invalid_key(
            "domain must be a host name such as acme.com: dot-separated labels of 1-63 \
             letters, digits or hyphens (no scheme, path or port)"
                .into(),
        ));
    }
    Ok(normalised)
}

/// An id from another system: compared exactly once trimmed.
fn opaque(field: &str, raw: &str) -> Result<String, RecordError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(RecordError::new(
            OutcomeCode::MissingKey,
            format!("{field} is required: the action matches by it"),
        ));
    }
    if trimmed.chars().count() > EXTERNAL_ID_MAX_CHARS {
        return Err(invalid_key(format!(
            "{field} is longer than {EXTERNAL_ID_MAX_CHARS} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(RecordError::new(
            OutcomeCode::InvalidCharacters,
            format!("{field} contains a control character"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// A document id: 24 hexadecimal digits (an ObjectId, lowercased) or any other text id.
fn document_id(raw: &str) -> Result<String, RecordError> {
    let id = opaque(ID_FIELD, raw)?;
    if is_object_id(&id) {
        return Ok(id.to_ascii_lowercase());
    }
    Ok(id)
}

/// Whether a key of `matchBy: id` names an ObjectId (the consumer matches it as one).
pub fn is_object_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definitions() -> FieldDefinitions {
        let mut definitions = FieldDefinitions::parse(
            &json!({"fields": [
                {"name": "sfId", "type": "string", "unique": true},
                {"name": "plain", "type": "string"},
                {"name": "tags", "type": "string[]"},
            ]}),
            EntityType::Contact,
        )
        .unwrap();
        definitions.fields[0].slot = Some(2);
        definitions
    }

    #[test]
    fn match_by_is_read_against_the_entity_and_the_definition() {
        let custom = definitions();
        let sf = MatchBy::ExternalId {
            field: "sfId".into(),
            slot: 2,
        };
        let parse = |raw, entity| MatchBy::parse(raw, entity, &custom);
        assert_eq!(parse("email", EntityType::Contact), Ok(MatchBy::Natural));
        assert_eq!(parse("natural", EntityType::Company), Ok(MatchBy::Natural));
        assert_eq!(parse("domain", EntityType::Company), Ok(MatchBy::Natural));
        assert!(parse("email", EntityType::Company).is_err());
        assert_eq!(parse("id", EntityType::Task), Ok(MatchBy::Id));
        assert_eq!(
            parse("externalId:sfId", EntityType::Contact),
            Ok(sf.clone())
        );
        assert_eq!(sf.as_text(), "externalId:sfId");
        assert_eq!(
            sf.document_field(EntityType::Contact.spec()),
            "_externalId2"
        );
        assert_eq!(serde_json::to_value(&sf).unwrap(), "externalId:sfId@2");
        assert!(parse("externalId:tags", EntityType::Contact).is_err());
        assert!(parse("externalId:plain", EntityType::Contact).is_err());
        assert!(parse("externalId:nope", EntityType::Contact).is_err());
        assert!(parse("externalId:", EntityType::Contact).is_err());
        for by in [MatchBy::Natural, MatchBy::Id, sf.clone()] {
            let stored = serde_json::to_value(&by).unwrap();
            assert_eq!(serde_json::from_value::<MatchBy>(stored).unwrap(), by);
        }
        assert!(!MatchBy::Id.allows(ActionType::Upsert));
        assert!(sf.allows(ActionType::Upsert));
        assert!(!sf.allows(ActionType::Create));
    }

    #[test]
    fn keys_are_normalised_by_kind() {
        let company = EntityType::Company.spec();
        let key = |by: &MatchBy, spec, value: Value| by.key_of(spec, Some(&value));
        assert_eq!(
            key(&MatchBy::Natural, company, json!(" ACME.com. ")),
            Ok("acme.com".into())
        );
        assert_eq!(
            key(&MatchBy::Natural, company, json!("https://acme.com"))
                .unwrap_err()
                .code,
            OutcomeCode::InvalidKey
        );
        assert_eq!(
            MatchBy::Natural.key_of(company, None).unwrap_err().code,
            OutcomeCode::MissingKey
        );
        let contact = EntityType::Contact.spec();
        assert_eq!(
            MatchBy::Natural.key_of(contact, None).unwrap_err().code,
            OutcomeCode::MissingEmail
        );
        assert_eq!(
            key(&MatchBy::Id, contact, json!("65A1B2C3D4E5F60718293A4B")),
            Ok("65a1b2c3d4e5f60718293a4b".into())
        );
        assert_eq!(
            key(&MatchBy::Id, contact, json!(" contact-7 ")),
            Ok("contact-7".into())
        );
        assert_eq!(
            key(&MatchBy::Id, contact, json!(7)).unwrap_err().code,
            OutcomeCode::InvalidType
        );
        let task = EntityType::Task.spec();
        assert_eq!(key(&MatchBy::Natural, task, json!("T-1")), Ok("T-1".into()));
        assert_eq!(
            key(&MatchBy::Natural, task, json!("x".repeat(256)))
                .unwrap_err()
                .code,
            OutcomeCode::InvalidKey
        );
        assert_eq!(
            MatchBy::Natural.duplicate_code(company),
            OutcomeCode::DuplicateDomain
        );
        assert_eq!(
            MatchBy::Id.duplicate_code(contact),
            OutcomeCode::DuplicateId
        );
    }
}
