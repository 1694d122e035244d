//! The key a batch's records find their documents by, as MongoDB holds it.

use domain::entity::EntitySpec;
use std::borrow::Cow;

use domain::key::is_object_id;
use domain::MatchBy;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, Document};

#[derive(Debug, Clone)]
pub(crate) struct Key<'a> {
    /// The document field: `email`, `_id`, `_externalId1`, ...
    field: Cow<'static, str>,
    /// The record field, as messages name it: `email`, `id`, `sfId`, ...
    pub(crate) name: &'a str,
    by_id: bool,
    /// An external id is also written under its own name when a document is created.
    external: bool,
}

impl<'a> Key<'a> {
    pub(crate) fn of(spec: &'static EntitySpec, match_by: &'a MatchBy) -> Self {
        Self {
            field: match_by.document_field(spec),
            name: match_by.record_field(spec),
            by_id: *match_by == MatchBy::Id,
            external: matches!(match_by, MatchBy::ExternalId { .. }),
        }
    }

    pub(crate) fn field(&self) -> &str {
        &self.field
    }

    /// The field a new document shows an external id in (its slot is the matched one).
    pub(crate) fn visible_field(&self) -> Option<&str> {
        self.external.then_some(self.name)
    }

    /// A record's normalised key as stored: a document id of 24 hexadecimal digits is an
    /// ObjectId (what MongoDB and its drivers make), any other key text.
    pub(crate) fn bson(&self, key: &str) -> Bson {
        if self.by_id && is_object_id(key) {
            if let Ok(id) = ObjectId::parse_str(key) {
                return Bson::ObjectId(id);
            }
        }
        Bson::String(key.to_owned())
    }

    /// The key of a stored document, as records write it.
    pub(crate) fn text_of(&self, document: &Document) -> Option<String> {
        match document.get(self.field())? {
            Bson::ObjectId(id) if self.by_id => Some(id.to_hex()),
            Bson::String(text) => Some(text.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::key::{DOCUMENT_ID, ID_FIELD};
    use domain::EntityType;
    use mongodb::bson::doc;

    #[test]
    fn ids_of_24_hex_digits_are_object_ids_and_read_back_as_written() {
        let by_id = MatchBy::Id;
        let key = Key::of(EntityType::Contact.spec(), &by_id);
        assert_eq!((key.field(), key.name), (DOCUMENT_ID, ID_FIELD));
        let hex = "65a1b2c3d4e5f60718293a4b";
        let stored = key.bson(hex);
        assert!(matches!(stored, Bson::ObjectId(_)));
        assert_eq!(key.text_of(&doc! { "_id": stored }).as_deref(), Some(hex));
        assert_eq!(key.bson("c-7"), Bson::String("c-7".into()));
        let natural = MatchBy::Natural;
        let email = Key::of(EntityType::Contact.spec(), &natural);
        // An email that happens to be hex is still text.
        assert_eq!(email.bson(hex), Bson::String(hex.into()));
        assert_eq!(
            email.text_of(&doc! { "email": "a@b.co" }).as_deref(),
            Some("a@b.co")
        );
    }
}
