//! The entity registry: every kind of CRM record a bulk action can change, declared once.
//!
//! A declaration says where the entity's documents live, which field identifies one within
//! an account (its natural key, unique per account), and its built-in fields with their
//! types and limits. Everything downstream reads the declaration: the api validates and
//! dedups by it, the consumer picks the collection and the key from it, the views show the
//! entity's name. Adding an entity type is a variant here, its `EntitySpec`, and tests.

use serde::{Deserialize, Serialize};

use crate::fields::FieldType;

/// The kind of CRM record an action changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EntityType {
    Contact,
    Company,
    Lead,
    Opportunity,
    Task,
}

/// How an entity's natural key is read from a record and normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An email address (`record::Email`): trimmed, lowercased, NFC.
    Email,
    /// A host name (`acme.com`): trimmed, lowercased, NFC, a trailing dot dropped.
    Domain,
    /// An identifier from another system, compared exactly (after trimming).
    ExternalId,
}

/// A built-in field: checked like an account's field of the same definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuiltInField {
    pub name: &'static str,
    pub field_type: FieldType,
    pub max_length: Option<u32>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub allowed: &'static [&'static str],
}

impl BuiltInField {
    const fn text(name: &'static str, max_length: u32) -> Self {
        Self {
            name,
            field_type: FieldType::Text,
            max_length: Some(max_length),
            min: None,
            max: None,
            allowed: &[],
        }
    }

    const fn integer(name: &'static str, min: f64, max: f64) -> Self {
        Self {
            name,
            field_type: FieldType::Integer,
            max_length: None,
            min: Some(min),
            max: Some(max),
            allowed: &[],
        }
    }

    const fn number_at_least(name: &'static str, min: f64) -> Self {
        Self {
            name,
            field_type: FieldType::Number,
            max_length: None,
            min: Some(min),
            max: None,
            allowed: &[],
        }
    }

    const fn date(name: &'static str) -> Self {
        Self {
            name,
            field_type: FieldType::Date,
            max_length: None,
            min: None,
            max: None,
            allowed: &[],
        }
    }

    const fn one_of(name: &'static str, allowed: &'static [&'static str]) -> Self {
        Self {
            name,
            field_type: FieldType::Text,
            max_length: None,
            min: None,
            max: None,
            allowed,
        }
    }
}

/// Everything the platform knows about one entity type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntitySpec {
    pub entity_type: EntityType,
    /// The MongoDB collection of its documents.
    pub collection: &'static str,
    /// The field that identifies a document within an account; unique per account.
    pub natural_key: &'static str,
    pub key_kind: KeyKind,
    /// Its fields besides the natural key.
    pub fields: &'static [BuiltInField],
}

/// The longest external id (the natural key of opportunities and tasks, or an account's
/// external id field), in characters.
pub const EXTERNAL_ID_MAX_CHARS: usize = 255;

const NAME: BuiltInField = BuiltInField::text("name", 256);

const CONTACT: EntitySpec = EntitySpec {
    entity_type: EntityType::Contact,
    collection: "contacts",
    natural_key: "email",
    key_kind: KeyKind::Email,
    fields: &[
        NAME,
        BuiltInField::integer("age", 0.0, 150.0),
        BuiltInField::text("status", 64),
    ],
};

const COMPANY: EntitySpec = EntitySpec {
    entity_type: EntityType::Company,
    collection: "companies",
    natural_key: "domain",
    key_kind: KeyKind::Domain,
    fields: &[
        NAME,
        BuiltInField::text("industry", 128),
        BuiltInField::integer("employees", 0.0, 10_000_000.0),
        BuiltInField::number_at_least("annualRevenue", 0.0),
    ],
};

const LEAD: EntitySpec = EntitySpec {
    entity_type: EntityType::Lead,
    collection: "leads",
    natural_key: "email",
    key_kind: KeyKind::Email,
    fields: &[
        NAME,
        BuiltInField::text("company", 256),
        BuiltInField::text("status", 64),
        BuiltInField::text("source", 64),
    ],
};

const OPPORTUNITY: EntitySpec = EntitySpec {
    entity_type: EntityType::Opportunity,
    collection: "opportunities",
    natural_key: "externalId",
    key_kind: KeyKind::ExternalId,
    fields: &[
        NAME,
        BuiltInField::number_at_least("amount", 0.0),
        BuiltInField::text("stage", 64),
        BuiltInField::date("closeDate"),
    ],
};

const TASK: EntitySpec = EntitySpec {
    entity_type: EntityType::Task,
    collection: "tasks",
    natural_key: "externalId",
    key_kind: KeyKind::ExternalId,
    fields: &[
        BuiltInField::text("subject", 256),
        BuiltInField::date("dueDate"),
        BuiltInField::one_of("status", &["open", "in_progress", "done"]),
        BuiltInField::one_of("priority", &["low", "normal", "high"]),
    ],
};

impl EntityType {
    pub const ALL: [EntityType; 5] = [
        EntityType::Contact,
        EntityType::Company,
        EntityType::Lead,
        EntityType::Opportunity,
        EntityType::Task,
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            EntityType::Contact => "contact",
            EntityType::Company => "company",
            EntityType::Lead => "lead",
            EntityType::Opportunity => "opportunity",
            EntityType::Task => "task",
        }
    }

    pub fn spec(&self) -> &'static EntitySpec {
        match self {
            EntityType::Contact => &CONTACT,
            EntityType::Company => &COMPANY,
            EntityType::Lead => &LEAD,
            EntityType::Opportunity => &OPPORTUNITY,
            EntityType::Task => &TASK,
        }
    }
}

impl EntitySpec {
    pub fn built_in(&self, name: &str) -> Option<&'static BuiltInField> {
        self.fields.iter().find(|field| field.name == name)
    }

    /// The natural key and the built-in fields, by name.
    pub fn field_names(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.natural_key).chain(self.fields.iter().map(|field| field.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_entity_is_declared_once_and_consistently() {
        let mut collections = HashSet::new();
        for entity in EntityType::ALL {
            let spec = entity.spec();
            assert_eq!(spec.entity_type, entity);
            assert_eq!(EntityType::parse(entity.as_str()), Some(entity));
            assert_eq!(serde_json::to_value(entity).unwrap(), entity.as_str());
            assert!(collections.insert(spec.collection), "{}", spec.collection);
            let names: Vec<&str> = spec.field_names().collect();
            let unique: HashSet<&&str> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{entity:?} names a field twice");
            for field in spec.fields {
                assert!(
                    !crate::fields::PLATFORM_NAMES.contains(&field.name),
                    "{entity:?}.{} is a platform field",
                    field.name
                );
                crate::fields::FieldDefinition::from(field)
                    .check_itself_as_built_in()
                    .unwrap_or_else(|e| panic!("{entity:?}: {e}"));
            }
        }
        assert_eq!(EntityType::parse("Contact"), None);
        assert_eq!(EntityType::parse("deal"), None);
    }
}
