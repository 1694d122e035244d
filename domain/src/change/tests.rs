use super::*;
use crate::fields::{FieldChange, FieldValue};
use crate::text::MESSAGE_MAX_BYTES;
use proptest::prelude::*;
use serde_json::json;

fn contacts(action_type: ActionType) -> RecordRules {
    RecordRules::contacts(action_type)
}

fn code_of(record: Value, action_type: ActionType) -> OutcomeCode {
    RecordChange::parse(&record, &contacts(action_type))
        .unwrap_err()
        .code
}

fn text(value: &str) -> FieldChange {
    FieldChange::Set(FieldValue::Text(value.into()))
}

fn account_rules(entity: EntityType, action_type: ActionType, match_by: MatchBy) -> RecordRules {
    let definitions = FieldDefinitions::parse(
        &json!({ "fields": [
            { "name": "tier", "type": "string", "enum": ["gold", "silver"] },
            { "name": "seats", "type": "integer", "min": 1 },
            { "name": "score", "type": "number" },
            { "name": "vip", "type": "boolean" },
            { "name": "since", "type": "date" },
            { "name": "tags", "type": "string[]" },
            { "name": "sfId", "type": "string", "maxLength": 18, "unique": true },
        ]}),
        entity,
    )
    .unwrap();
    RecordRules::new(entity, action_type, match_by, &definitions)
}

#[test]
fn null_clears_a_field_and_counts_as_a_change() {
    use ActionType::{Create, Update, Upsert};
    let record = json!({"email": "a@b.co", "name": null, "age": null, "status": "lead"});
    let change = RecordChange::parse(&record, &contacts(Update)).unwrap();
    assert_eq!(change.key, "a@b.co");
    assert_eq!(change.fields["name"], FieldChange::Clear);
    assert_eq!(change.fields["age"], FieldChange::Clear);
    assert_eq!(change.fields["status"], text("lead"));
    let only_clears = json!({"email": "a@b.co", "status": null});
    assert!(RecordChange::parse(&only_clears, &contacts(Update)).is_ok());
    assert!(RecordChange::parse(&only_clears, &contacts(Upsert)).is_ok());
    // A new contact has nothing to clear: the clears are dropped, the values kept.
    let created = RecordChange::parse(&record, &contacts(Create)).unwrap();
    assert_eq!(created.fields.keys().collect::<Vec<_>>(), ["status"]);
    // The key itself cannot be cleared.
    assert_eq!(
        code_of(json!({"email": null, "name": "x"}), Update),
        OutcomeCode::MissingEmail
    );
}

#[test]
fn a_change_survives_the_batch_payload_and_old_payloads_read_as_before() {
    let rules = account_rules(EntityType::Contact, ActionType::Upsert, MatchBy::Natural);
    let record = json!({
        "email": "a@b.co", "name": null, "age": 7, "score": 2.0, "seats": 2,
        "since": "2026-01-02", "tags": {"add": ["x"], "remove": ["y"]}, "vip": true,
    });
    let change = RecordChange::parse(&record, &rules).unwrap();
    let stored = serde_json::to_value(&change).unwrap();
    assert_eq!(
        stored,
        json!({"key": "a@b.co", "fields": {
            "age": 7, "name": null, "score": 2.0, "seats": 2,
            "since": {"$date": 1_767_312_000_000_i64}, "tags": {"add": ["x"], "remove": ["y"]},
            "vip": true,
        }})
    );
    let text = serde_json::to_string(&change).unwrap();
    assert_eq!(serde_json::from_str::<RecordChange>(&text).unwrap(), change);
    // As a build before the registry wrote a contact's change: built-in fields at the top
    // level, absent ones left alone, custom ones tagged.
    let old: RecordChange = serde_json::from_value(json!({
        "email": "a@b.co", "status": "x", "age": null,
        "custom": {"tier": {"set": {"text": "gold"}}, "vip": "clear",
                   "tags": {"edit": {"add": ["a"], "remove": []}}},
    }))
    .unwrap();
    assert_eq!(old.key, "a@b.co");
    assert_eq!(
        old.fields["status"],
        FieldChange::Set(FieldValue::Text("x".into()))
    );
    assert_eq!(old.fields["age"], FieldChange::Clear);
    assert_eq!(
        old.fields["tier"],
        FieldChange::Set(FieldValue::Text("gold".into()))
    );
    assert_eq!(old.fields["vip"], FieldChange::Clear);
    assert!(!old.fields.contains_key("name"));
    assert_eq!(
        old.fields["tags"],
        FieldChange::Edit {
            add: vec!["a".into()],
            remove: vec![]
        }
    );
}

#[test]
fn a_record_names_the_accounts_own_fields() {
    use ActionType::{Create, Delete, Update};
    let rules = |action| account_rules(EntityType::Contact, action, MatchBy::Natural);
    let record = json!({
        "email": "a@b.co", "tier": "gold", "seats": 3, "score": 0.5, "vip": null,
        "since": "2026-01-02", "tags": {"add": ["vip"], "remove": ["trial"]},
    });
    let change = RecordChange::parse(&record, &rules(Update)).unwrap();
    assert_eq!(
        change.fields.keys().collect::<Vec<_>>(),
        ["score", "seats", "since", "tags", "tier", "vip"]
    );
    assert_eq!(change.fields["vip"], FieldChange::Clear);
    assert_eq!(change.fields["tier"], text("gold"));
    // A new contact: no clear, and the list starts with its adds.
    let created = RecordChange::parse(&record, &rules(Create)).unwrap();
    assert!(!created.fields.contains_key("vip"));
    assert_eq!(
        created.fields["tags"],
        FieldChange::Set(FieldValue::TextList(vec!["vip".into()]))
    );
    assert!(RecordChange::parse(&record, &rules(Delete))
        .unwrap()
        .fields
        .is_empty());
    // Only custom fields make an update; undefined ones are still unknown.
    let seats = json!({"email": "a@b.co", "seats": 2});
    assert!(RecordChange::parse(&seats, &rules(Update)).is_ok());
    assert_eq!(code_of(seats, Update), OutcomeCode::UnknownField);
    assert_eq!(
        RecordChange::parse(&json!({"email": "a@b.co", "seats": 0}), &rules(Update))
            .unwrap_err()
            .code,
        OutcomeCode::InvalidValue
    );
}

#[test]
fn every_entity_reads_its_own_key_and_fields() {
    use ActionType::Upsert;
    let cases = [
        (
            EntityType::Contact,
            json!({"email": "A@b.co", "age": 3}),
            "a@b.co",
        ),
        (
            EntityType::Lead,
            json!({"email": "A@b.co", "source": "web"}),
            "a@b.co",
        ),
        (
            EntityType::Company,
            json!({"domain": "ACME.com", "employees": 12}),
            "acme.com",
        ),
        (
            EntityType::Opportunity,
            json!({"externalId": " O-1 ", "amount": 12.5, "closeDate": "2027-01-01"}),
            "O-1",
        ),
        (
            EntityType::Task,
            json!({"externalId": "T-1", "priority": "high"}),
            "T-1",
        ),
    ];
    for (entity, record, key) in cases {
        let rules = RecordRules::new(
            entity,
            Upsert,
            MatchBy::Natural,
            &FieldDefinitions::default(),
        );
        let change =
            RecordChange::parse(&record, &rules).unwrap_or_else(|e| panic!("{entity:?}: {e}"));
        assert_eq!(change.key, key, "{entity:?}");
        assert_eq!(change.fields.len(), record.as_object().unwrap().len() - 1);
        // Another entity's fields are unknown to it.
        let mut foreign = record.clone();
        foreign["industry"] = json!("x");
        if entity != EntityType::Company {
            assert_eq!(
                RecordChange::parse(&foreign, &rules).unwrap_err().code,
                OutcomeCode::UnknownField,
                "{entity:?}"
            );
        }
    }
    let tasks = RecordRules::new(
        EntityType::Task,
        Upsert,
        MatchBy::Natural,
        &FieldDefinitions::default(),
    );
    assert_eq!(
        RecordChange::parse(&json!({"externalId": "T", "priority": "urgent"}), &tasks)
            .unwrap_err()
            .code,
        OutcomeCode::InvalidValue
    );
    assert_eq!(
        RecordChange::parse(&json!({"subject": "x"}), &tasks)
            .unwrap_err()
            .code,
        OutcomeCode::MissingKey
    );
}

#[test]
fn matching_by_id_or_an_external_id() {
    use ActionType::{Delete, Update, Upsert};
    let by_id = account_rules(EntityType::Contact, Update, MatchBy::Id);
    let change = RecordChange::parse(
        &json!({"id": "65A1B2C3D4E5F60718293A4B", "name": "Ann"}),
        &by_id,
    )
    .unwrap();
    assert_eq!(change.key, "65a1b2c3d4e5f60718293a4b");
    assert_eq!(change.fields.keys().collect::<Vec<_>>(), ["name"]);
    // The natural key cannot be changed through another key.
    assert_eq!(
        RecordChange::parse(&json!({"id": "x1", "email": "a@b.co", "name": "A"}), &by_id)
            .unwrap_err()
            .code,
        OutcomeCode::ImmutableField
    );
    assert_eq!(
        RecordChange::parse(&json!({"email": "a@b.co", "name": "A"}), &by_id)
            .unwrap_err()
            .code,
        OutcomeCode::MissingKey
    );
    // A delete reads only its key.
    let delete = account_rules(EntityType::Contact, Delete, MatchBy::Id);
    assert!(RecordChange::parse(&json!({"id": "x1", "email": "a@b.co"}), &delete).is_ok());
    // An upsert by an external id needs the natural key to create, and writes it only then.
    let sf = MatchBy::ExternalId {
        field: "sfId".into(),
        slot: 1,
    };
    let upsert = account_rules(EntityType::Contact, Upsert, sf.clone());
    let change = RecordChange::parse(
        &json!({"sfId": "001A", "email": "A@b.co", "tier": "gold"}),
        &upsert,
    )
    .unwrap();
    assert_eq!(change.key, "001A");
    assert_eq!(change.natural_key.as_deref(), Some("a@b.co"));
    assert_eq!(change.fields.keys().collect::<Vec<_>>(), ["tier"]);
    assert_eq!(
        RecordChange::parse(&json!({"sfId": "001A", "tier": "gold"}), &upsert)
            .unwrap_err()
            .code,
        OutcomeCode::MissingEmail
    );
    // The field's own limits hold for the key.
    assert_eq!(
        RecordChange::parse(&json!({"sfId": "x".repeat(19), "email": "a@b.co"}), &upsert)
            .unwrap_err()
            .code,
        OutcomeCode::InvalidValue
    );
    let update = account_rules(EntityType::Contact, Update, sf);
    assert_eq!(
        RecordChange::parse(&json!({"sfId": "001A", "tier": "gold"}), &update)
            .unwrap()
            .natural_key,
        None
    );
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
        code_of(json!({"email": "a@b.co", "id": "1"}), Upsert),
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
        code_of(json!({"email": "a@b.co", "name": "x".repeat(257)}), Upsert),
        OutcomeCode::InvalidValue
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
    let change = RecordChange::parse(
        &json!({"email": "a@b.co", "name": "Ann\tLee\r\nJr"}),
        &contacts(Upsert),
    )
    .unwrap();
    assert_eq!(change.fields["name"], text("Ann\tLee\r\nJr"));
}

#[test]
fn a_huge_field_name_is_quoted_as_a_short_prefix() {
    let mut record = Map::new();
    record.insert("email".into(), json!("a@b.co"));
    record.insert("k".repeat(17_000_000), json!(1));
    let error =
        RecordChange::parse(&Value::Object(record), &contacts(ActionType::Upsert)).unwrap_err();
    assert_eq!(error.code, OutcomeCode::UnknownField);
    assert!(error.message.len() < 300, "{}", error.message.len());
    assert!(error.message.contains("\"kkkk") && error.message.contains('…'));
}

#[test]
fn delete_keeps_only_the_key() {
    let change = RecordChange::parse(
        &json!({"email": "A@b.co", "name": "x"}),
        &contacts(ActionType::Delete),
    )
    .unwrap();
    assert_eq!(change.key, "a@b.co");
    assert!(change.fields.is_empty());
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
        match RecordChange::parse(&Value::Object(object), &contacts(ActionType::Upsert)) {
            Ok(change) => {
                if let Some(FieldChange::Set(FieldValue::Text(name))) = change.fields.get("name") {
                    prop_assert!(!has_forbidden_control(name, true));
                }
                prop_assert!(!change.key.chars().any(char::is_control));
            }
            Err(error) => prop_assert!(error.message.len() <= MESSAGE_MAX_BYTES),
        }
    }
}

/// Definitions of up to four fields `f0`..`f3` of any type and limits.
fn a_definition() -> impl Strategy<Value = FieldDefinitions> {
    proptest::collection::vec(crate::fields::tests::a_field(), 0..4).prop_map(|fields| {
        FieldDefinitions {
            fields: fields
                .into_iter()
                .enumerate()
                .map(|(i, mut field)| {
                    field.name = format!("f{i}");
                    field
                })
                .collect(),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// For random definitions and records: a record is accepted exactly when every field
    /// it names is defined and its value satisfies the definition (`satisfies`, written
    /// apart from the checks), and what it plans to write names exactly those fields (a
    /// delete none, a create the ones that have something to insert).
    #[test]
    fn a_record_is_accepted_exactly_when_it_satisfies_the_definition(
        definitions in a_definition(),
        values in proptest::collection::vec((0usize..6, crate::fields::tests::a_value()), 0..5),
        action_type in proptest::sample::select(ActionType::ALL.to_vec()),
    ) {
        let valid = FieldDefinitions::parse(&serde_json::to_value(&definitions).unwrap(), EntityType::Contact);
        prop_assume!(valid.is_ok());
        let mut record = Map::new();
        record.insert("email".into(), json!("a@b.co"));
        for (i, value) in values {
            // f4 and f5 are never defined.
            record.insert(format!("f{i}"), value);
        }
        let rules = RecordRules::new(EntityType::Contact, action_type, MatchBy::Natural, &definitions);
        let parsed = RecordChange::parse(&Value::Object(record.clone()), &rules);
        // Sorted: a workspace build may turn on serde_json's `preserve_order`.
        let mut named: Vec<&String> = record.keys().filter(|name| *name != "email").collect();
        named.sort();
        let satisfied = named.iter().all(|name| {
            definitions
                .get(name)
                .is_some_and(|field| crate::fields::tests::satisfies(field, &record[name.as_str()]))
        });
        let expected = satisfied && !(action_type == ActionType::Update && named.is_empty());
        prop_assert_eq!(parsed.is_ok(), expected, "{:?} {:?}: {:?}", definitions, record, parsed);
        if let Ok(change) = parsed {
            prop_assert_eq!(&change.key, "a@b.co");
            let written: Vec<&str> = change.fields.keys().collect();
            match action_type {
                ActionType::Delete => prop_assert!(written.is_empty()),
                ActionType::Create => prop_assert!(written.iter().all(|name| named.iter().any(|held| held == name))),
                _ => prop_assert_eq!(written, named),
            }
        }
    }
}
