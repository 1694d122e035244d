use proptest::prelude::*;
use serde_json::json;

use super::*;

fn definition(raw: Value) -> Result<FieldDefinitions, DefinitionError> {
    FieldDefinitions::parse(&json!({ "fields": [raw] }), EntityType::Contact)
}

fn field(raw: Value) -> FieldDefinition {
    definition(raw)
        .expect("a valid definition")
        .fields
        .remove(0)
}

#[test]
fn a_definition_is_checked_whole() {
    assert!(definition(
        json!({"name": "tier", "type": "string", "maxLength": 8, "enum": ["gold"]})
    )
    .is_ok());
    for (bad, why) in [
        (
            json!({"name": "9lives", "type": "string"}),
            "a name is a letter",
        ),
        (json!({"name": "Email", "type": "string"}), "is reserved"),
        (json!({"name": "id", "type": "string"}), "is reserved"),
        (
            json!({"name": "tags", "type": "string[]", "unique": true}),
            "unique applies",
        ),
        (
            json!({"name": "createdByBulkAction", "type": "string"}),
            "is reserved",
        ),
        (json!({"name": "a", "type": "text"}), "unknown variant"),
        (
            json!({"name": "a", "type": "boolean", "maxLength": 3}),
            "maxLength applies",
        ),
        (
            json!({"name": "a", "type": "string", "min": 1}),
            "min and max apply",
        ),
        (
            json!({"name": "a", "type": "integer", "min": 5, "max": 1}),
            "min is above max",
        ),
        (
            json!({"name": "a", "type": "integer", "enum": ["x"]}),
            "does not fit",
        ),
        (
            json!({"name": "a", "type": "string", "maxLength": 2, "enum": ["abc"]}),
            "does not fit",
        ),
        (
            json!({"name": "a", "type": "date", "enum": ["2026-01-01"]}),
            "enum applies",
        ),
        (
            json!({"name": "a", "type": "string", "nullable": true}),
            "unknown field",
        ),
    ] {
        let error = definition(bad.clone()).expect_err(&bad.to_string());
        assert!(error.message.contains(why), "{bad}: {error}");
    }
    let twice = json!({"fields": [{"name": "tier", "type": "string"}, {"name": "Tier", "type": "integer"}]});
    assert!(FieldDefinitions::parse(&twice, EntityType::Contact).is_err());
    let many: Vec<Value> = (0..=MAX_FIELDS)
        .map(|i| json!({"name": format!("f{i}"), "type": "boolean"}))
        .collect();
    assert!(FieldDefinitions::parse(&json!({ "fields": many }), EntityType::Contact).is_err());
}

#[test]
fn values_of_every_type() {
    let date = field(json!({"name": "since", "type": "date"}));
    assert_eq!(
        date.check(&json!("1970-01-02")),
        Ok(FieldChange::Set(FieldValue::Date(86_400_000)))
    );
    assert_eq!(
        date.check(&json!("1970-01-01T00:00:01Z")),
        Ok(FieldChange::Set(FieldValue::Date(1_000)))
    );
    assert_eq!(
        date.check(&json!("yesterday")).unwrap_err().code,
        OutcomeCode::InvalidValue
    );
    let flag = field(json!({"name": "vip", "type": "boolean"}));
    assert_eq!(
        flag.check(&json!(true)),
        Ok(FieldChange::Set(FieldValue::Boolean(true)))
    );
    assert_eq!(
        flag.check(&json!("true")).unwrap_err().code,
        OutcomeCode::InvalidType
    );
    assert_eq!(flag.check(&Value::Null), Ok(FieldChange::Clear));
    let score = field(json!({"name": "score", "type": "number", "min": 0, "max": 1}));
    assert_eq!(
        score.check(&json!(0.5)),
        Ok(FieldChange::Set(FieldValue::Number(0.5)))
    );
    assert_eq!(
        score.check(&json!(2)).unwrap_err().code,
        OutcomeCode::InvalidValue
    );
    let seats = field(json!({"name": "seats", "type": "integer", "enum": [1, 5]}));
    assert_eq!(
        seats.check(&json!(5)),
        Ok(FieldChange::Set(FieldValue::Integer(5)))
    );
    assert_eq!(
        seats.check(&json!(5.5)).unwrap_err().code,
        OutcomeCode::InvalidType
    );
    assert_eq!(
        seats.check(&json!(2)).unwrap_err().code,
        OutcomeCode::InvalidValue
    );
}

#[test]
fn a_list_is_replaced_or_edited() {
    let tags = field(json!({"name": "tags", "type": "string[]", "maxLength": 5}));
    assert_eq!(
        tags.check(&json!(["vip", "vip", "new"])),
        Ok(FieldChange::Set(FieldValue::TextList(vec![
            "vip".into(),
            "new".into()
        ])))
    );
    assert_eq!(
        tags.check(&json!({"add": ["vip"], "remove": ["trial"]})),
        Ok(FieldChange::Edit {
            add: vec!["vip".into()],
            remove: vec!["trial".into()]
        })
    );
    for bad in [
        json!({"add": ["vip"], "remove": ["vip"]}),
        json!({"add": []}),
        json!(["toolong"]),
        json!((0..=LIST_MAX_ITEMS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()),
    ] {
        assert_eq!(
            tags.check(&bad).unwrap_err().code,
            OutcomeCode::InvalidValue,
            "{bad}"
        );
    }
    for bad in [
        json!("vip"),
        json!([1]),
        json!({"put": ["x"]}),
        json!({"add": "x"}),
    ] {
        assert_eq!(
            tags.check(&bad).unwrap_err().code,
            OutcomeCode::InvalidType,
            "{bad}"
        );
    }
}

/// What a value must be to satisfy a definition, written out plainly, apart from `check`.
pub(crate) fn satisfies(field: &FieldDefinition, value: &Value) -> bool {
    let enum_ok = |v: &Value| {
        field.allowed.as_ref().is_none_or(|allowed| {
            allowed.iter().any(|a| match (a, v) {
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                _ => a == v,
            })
        })
    };
    let range_ok = |n: f64| field.min.is_none_or(|m| n >= m) && field.max.is_none_or(|m| n <= m);
    let text_ok = |v: &Value| match v {
        Value::String(s) => {
            s.chars().count() <= field.max_length.unwrap_or(TEXT_MAX_CHARS) as usize
                && !s.chars().any(|c| c.is_control() && !"\t\n\r".contains(c))
                && enum_ok(v)
        }
        _ => false,
    };
    let list_ok = |items: &Vec<Value>| items.len() <= LIST_MAX_ITEMS && items.iter().all(text_ok);
    match (field.field_type, value) {
        (_, Value::Null) => true,
        (FieldType::Text, v) => text_ok(v),
        (FieldType::Integer, Value::Number(n)) => {
            n.as_i64().is_some_and(|i| range_ok(i as f64)) && enum_ok(value)
        }
        (FieldType::Number, Value::Number(n)) => {
            n.as_f64().is_some_and(|f| f.is_finite() && range_ok(f)) && enum_ok(value)
        }
        (FieldType::Boolean, Value::Bool(_)) => true,
        (FieldType::TextList, Value::Array(items)) => list_ok(items),
        (FieldType::TextList, Value::Object(edit)) => {
            let part = |key: &str| match edit.get(key) {
                None => Some(Vec::new()),
                Some(Value::Array(items)) if list_ok(items) => Some(items.clone()),
                Some(_) => None,
            };
            edit.keys().all(|k| k == "add" || k == "remove")
                && match (part("add"), part("remove")) {
                    (Some(add), Some(remove)) => {
                        let changes_something = !add.is_empty() || !remove.is_empty();
                        let disjoint = add.iter().all(|a| !remove.contains(a));
                        changes_something && disjoint
                    }
                    _ => false,
                }
        }
        _ => false,
    }
}

pub(crate) fn a_field() -> impl Strategy<Value = FieldDefinition> {
    // Small alphabets and bounds, so that limits are met exactly and lists overlap often.
    let text_limits = (
        prop::option::of(1u32..4),
        prop::option::of(prop::collection::vec("[ab]{0,3}", 1..4)),
    );
    let number_limits = (
        prop::option::of(-5i64..5),
        prop::option::of(-5i64..5),
        prop::option::of(prop::collection::vec(-5i64..5, 1..4)),
    );
    prop_oneof![
        text_limits.clone().prop_map(|(max_length, allowed)| (
            FieldType::Text,
            max_length,
            None,
            None,
            allowed.map(|v| v.into_iter().map(Value::from).collect())
        )),
        text_limits.prop_map(|(max_length, allowed)| (
            FieldType::TextList,
            max_length,
            None,
            None,
            allowed.map(|v| v.into_iter().map(Value::from).collect())
        )),
        number_limits.clone().prop_map(|(min, max, allowed)| (
            FieldType::Integer,
            None,
            min,
            max,
            allowed.map(|v| v.into_iter().map(Value::from).collect())
        )),
        number_limits.prop_map(|(min, max, allowed)| (
            FieldType::Number,
            None,
            min,
            max,
            allowed.map(|v| v.into_iter().map(Value::from).collect())
        )),
        Just((FieldType::Boolean, None, None, None, None)),
    ]
    .prop_map(
        |(field_type, max_length, min, max, allowed)| FieldDefinition {
            name: "f".into(),
            field_type,
            max_length,
            min: min.map(|m: i64| m as f64),
            max: max.map(|m: i64| m as f64),
            allowed,
            unique: false,
            slot: None,
        },
    )
}

/// A list item: mostly short strings (so that adds and removes overlap), now and then not.
fn an_item() -> impl Strategy<Value = Value> {
    prop_oneof![8 => "[ab]{0,2}".prop_map(Value::from), 1 => (-1i64..1).prop_map(Value::from), 1 => Just(Value::Null)]
}

pub(crate) fn a_value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-6i64..=6).prop_map(Value::from),
        (-7.0f64..7.0).prop_map(Value::from),
        "[ab]{0,4}".prop_map(Value::from),
        "[ab\u{0}\t]{0,4}".prop_map(Value::from),
    ];
    prop_oneof![
        4 => scalar.clone(),
        1 => prop::collection::vec(an_item(), 0..5).prop_map(Value::from),
        2 => (prop::option::of(prop::collection::vec(an_item(), 0..3)), prop::option::of(prop::collection::vec(an_item(), 0..3)), prop::bool::weighted(0.1))
            .prop_map(|(add, remove, odd)| {
                let mut edit = serde_json::Map::new();
                if let Some(add) = add { edit.insert("add".into(), Value::from(add)); }
                if let Some(remove) = remove { edit.insert("remove".into(), Value::from(remove)); }
                if odd { edit.insert("other".into(), Value::Null); }
                Value::Object(edit)
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    /// Validation accepts exactly the values that satisfy the definition, and what it
    /// accepts is of the field's type.
    #[test]
    fn check_accepts_exactly_what_satisfies_the_definition(field in a_field(), value in a_value()) {
        let field_is_valid = FieldDefinitions::parse(&json!({ "fields": [field.clone()] }), EntityType::Contact).is_ok();
        prop_assume!(field_is_valid);
        let checked = field.check(&value);
        prop_assert_eq!(checked.is_ok(), satisfies(&field, &value), "{:?} on {}: {:?}", field, value, checked);
        if let Ok(FieldChange::Set(set)) = checked {
            let of_type = matches!(
                (field.field_type, set),
                (FieldType::Text, FieldValue::Text(_))
                    | (FieldType::TextList, FieldValue::TextList(_))
                    | (FieldType::Integer, FieldValue::Integer(_))
                    | (FieldType::Number, FieldValue::Number(_))
                    | (FieldType::Boolean, FieldValue::Boolean(_))
            );
            prop_assert!(of_type);
        }
    }
}
