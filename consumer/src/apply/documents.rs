//! The MongoDB documents a record's change becomes: the update of an existing document and
//! the fields of a new one. Only the fields the record names appear in them.

use domain::fields::{FieldChange, FieldValue};
use domain::RecordChange;
use mongodb::bson::{doc, Bson, DateTime, Document};

/// The update of an existing document: `then`, when there is one, goes after `first` as a
/// statement of its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordUpdate {
    /// `$set` of the values and `updatedAt`, `$unset` of the fields cleared, and a list's
    /// adds (`$addToSet`) or removals (`$pullAll`).
    pub(crate) first: Document,
    /// The adds of a list that the record also takes items from: MongoDB refuses both on
    /// one field in one update, so the removals go first and the adds after, each
    /// idempotent.
    pub(crate) then: Option<Document>,
}

pub(crate) fn record_update(change: &RecordChange, now: DateTime) -> RecordUpdate {
    let mut set = Document::new();
    let mut unset = Document::new();
    let mut add = Document::new();
    let mut pull = Document::new();
    let mut add_after = Document::new();
    for (name, change) in &change.fields {
        match change {
            FieldChange::Set(value) => {
                set.insert(name, bson(value));
            }
            FieldChange::Clear => {
                unset.insert(name, "");
            }
            FieldChange::Edit { add: adds, remove } => {
                if !remove.is_empty() {
                    pull.insert(name, remove.clone());
                }
                let each = doc! { "$each": adds.clone() };
                match (adds.is_empty(), remove.is_empty()) {
                    (true, _) => {}
                    (false, true) => {
                        add.insert(name, each);
                    }
                    (false, false) => {
                        add_after.insert(name, each);
                    }
                }
            }
        }
    }
    set.insert("updatedAt", now);
    let mut first = doc! { "$set": set };
    for (operator, fields) in [("$unset", unset), ("$addToSet", add), ("$pullAll", pull)] {
        if !fields.is_empty() {
            first.insert(operator, fields);
        }
    }
    RecordUpdate {
        first,
        then: (!add_after.is_empty()).then(|| doc! { "$addToSet": add_after }),
    }
}

/// The fields a new document starts with besides its account and key: the natural key of
/// a record matched by an external id, the values set, and a list edited starts with its
/// adds (there is nothing to clear or remove).
pub(crate) fn new_document_fields(
    change: &RecordChange,
    natural_key: &str,
    now: DateTime,
) -> Document {
    let mut fields = Document::new();
    if let Some(natural) = &change.natural_key {
        fields.insert(natural_key, natural.as_str());
    }
    for (name, change) in &change.fields {
        if let Some(FieldChange::Set(value)) = change.on_insert() {
            fields.insert(name, bson(&value));
        }
    }
    fields.insert("updatedAt", now);
    fields
}

/// How a field's value is stored: dates as BSON dates, so they sort and compare.
pub(crate) fn bson(value: &FieldValue) -> Bson {
    match value {
        FieldValue::Text(text) => Bson::String(text.clone()),
        FieldValue::Number(number) => Bson::Double(*number),
        FieldValue::Integer(integer) => Bson::Int64(*integer),
        FieldValue::Boolean(flag) => Bson::Boolean(*flag),
        FieldValue::Date(millis) => Bson::DateTime(DateTime::from_millis(*millis)),
        FieldValue::TextList(items) => {
            Bson::Array(items.iter().cloned().map(Bson::String).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::fields::FieldDefinitions;
    use domain::{ActionType, EntityType, MatchBy, RecordRules};

    use super::*;

    fn change(record: serde_json::Value) -> RecordChange {
        let fields = FieldDefinitions::parse(
            &serde_json::json!({ "fields": [
                { "name": "tags", "type": "string[]" },
                { "name": "labels", "type": "string[]" },
                { "name": "since", "type": "date" },
                { "name": "vip", "type": "boolean" },
            ]}),
            EntityType::Contact,
        )
        .expect("a definition");
        let rules = RecordRules::new(
            EntityType::Contact,
            ActionType::Upsert,
            MatchBy::Natural,
            &fields,
        );
        RecordChange::parse(&record, &rules).expect("a valid record")
    }

    #[test]
    fn a_clear_is_an_unset_in_the_same_update_and_never_part_of_an_insert() {
        let now = DateTime::from_millis(0);
        let both = change(serde_json::json!({"email": "a@b.co", "name": "Ann", "age": null}));
        assert_eq!(
            record_update(&both, now).first,
            doc! { "$set": { "name": "Ann", "updatedAt": now }, "$unset": { "age": "" } }
        );
        assert_eq!(
            new_document_fields(&both, "email", now),
            doc! { "name": "Ann", "updatedAt": now }
        );
        let values = change(serde_json::json!({"email": "a@b.co", "age": 7, "status": "x"}));
        assert_eq!(
            record_update(&values, now),
            RecordUpdate {
                first: doc! { "$set": { "age": 7_i64, "status": "x", "updatedAt": now } },
                then: None,
            }
        );
    }

    #[test]
    fn custom_fields_and_lists() {
        let now = DateTime::from_millis(0);
        let record = serde_json::json!({
            "email": "a@b.co", "since": "1970-01-01T00:00:01Z", "vip": null,
            "tags": {"add": ["a"], "remove": ["b"]}, "labels": {"add": ["x"]},
        });
        let update = record_update(&change(record.clone()), now);
        assert_eq!(
            update.first,
            doc! {
                "$set": { "since": DateTime::from_millis(1_000), "updatedAt": now },
                "$unset": { "vip": "" },
                "$addToSet": { "labels": { "$each": ["x"] } },
                "$pullAll": { "tags": ["b"] },
            }
        );
        assert_eq!(
            update.then,
            Some(doc! { "$addToSet": { "tags": { "$each": ["a"] } } })
        );
        assert_eq!(
            new_document_fields(&change(record), "email", now),
            doc! {
                "labels": ["x"], "since": DateTime::from_millis(1_000), "tags": ["a"],
                "updatedAt": now,
            }
        );
    }
}
