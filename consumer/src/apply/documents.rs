//! The MongoDB documents a record's change becomes: the update of an existing contact and
//! the fields of a new one. Only the fields the record names appear in them.

use domain::fields::{FieldChange, FieldValue};
use domain::{ContactChange, FieldChange};
use mongodb::bson::{doc, Bson, DateTime, Document};

/// The update of an existing contact: `then`, when there is one, goes after `first` as a
/// statement of its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContactUpdate {
    /// `$set` of the values and `updatedAt`, `$unset` of the fields cleared, and a list's
    /// adds (`$addToSet`) or removals (`$pullAll`).
    pub(crate) first: Document,
    /// The adds of a list that the record also takes items from: MongoDB refuses both on
    /// one field in one update, so the removals go first and the adds after, each
    /// idempotent.
    pub(crate) then: Option<Document>,
}

pub(crate) fn contact_update(change: &ContactChange, now: DateTime) -> ContactUpdate {
    let mut set = Document::new();
    let mut unset = Document::new();
    let mut add = Document::new();
    let mut pull = Document::new();
    let mut add_after = Document::new();
    let fields = &change.fields;
    let built_in = [
        (
            "name",
            fields.name.as_ref().map(|c| text(c).map(Bson::String)),
        ),
        (
            "age",
            fields
                .age
                .as_ref()
                .map(|c| c.value().map(|a| Bson::Int64(*a))),
        ),
        (
            "status",
            fields.status.as_ref().map(|c| text(c).map(Bson::String)),
        ),
    ];
    for (name, change) in built_in {
        match change {
            Some(Some(value)) => {
                set.insert(name, value);
            }
            Some(None) => {
                unset.insert(name, "");
            }
            None => {}
        }
    }
    for (name, change) in &change.custom {
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
    ContactUpdate {
        first,
        then: (!add_after.is_empty()).then(|| doc! { "$addToSet": add_after }),
    }
}

/// The fields a new contact starts with: the values set, and a list edited starts with its
/// adds (there is nothing to clear or remove).
pub(crate) fn new_contact_fields(change: &ContactChange, now: DateTime) -> Document {
    let mut fields = Document::new();
    if let Some(FieldChange::Set(name)) = &change.fields.name {
        fields.insert("name", name.as_str());
    }
    if let Some(FieldChange::Set(age)) = change.fields.age {
        fields.insert("age", age);
    }
    if let Some(FieldChange::Set(status)) = &change.fields.status {
        fields.insert("status", status.as_str());
    }
    for (name, change) in &change.custom {
        if let Some(FieldChange::Set(value)) = change.on_insert() {
            fields.insert(name, bson(&value));
        }
    }
    fields.insert("updatedAt", now);
    fields
}

fn text(change: &FieldChange<String>) -> Option<String> {
    change.value().cloned()
}

/// How a custom field's value is stored: dates as BSON dates, so they sort and compare.
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
    use domain::ActionType;

    use super::*;

    fn change(record: serde_json::Value) -> ContactChange {
        let fields = FieldDefinitions::parse(&serde_json::json!({ "fields": [
            { "name": "tags", "type": "string[]" },
            { "name": "labels", "type": "string[]" },
            { "name": "since", "type": "date" },
            { "name": "vip", "type": "boolean" },
        ]}))
        .expect("a definition");
        let fields = domain::fields::FieldIndex::from(&fields);
        ContactChange::parse(&record, ActionType::Upsert, &fields).expect("a valid record")
    }

    #[test]
    fn a_clear_is_an_unset_in_the_same_update_and_never_part_of_an_insert() {
        let now = DateTime::from_millis(0);
        let both = change(serde_json::json!({"email": "a@b.co", "name": "Ann", "age": null}));
        assert_eq!(
            contact_update(&both, now).first,
            doc! { "$set": { "name": "Ann", "updatedAt": now }, "$unset": { "age": "" } }
        );
        assert_eq!(
            new_contact_fields(&both, now),
            doc! { "name": "Ann", "updatedAt": now }
        );
        let values = change(serde_json::json!({"email": "a@b.co", "age": 7, "status": "x"}));
        assert_eq!(
            contact_update(&values, now),
            ContactUpdate {
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
        let update = contact_update(&change(record.clone()), now);
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
            new_contact_fields(&change(record), now),
            doc! {
                "labels": ["x"], "since": DateTime::from_millis(1_000), "tags": ["a"],
                "updatedAt": now,
            }
        );
    }
}
