use super::*;
use crate::action::ActionType;
use crate::change::RecordRules;
use crate::entity::EntityType;
use crate::fields::FieldDefinitions;
use crate::fields::{FieldChange, FieldValue};
use crate::key::MatchBy;
use crate::outcome::OutcomeCode;
use crate::plan::{plan_with, Batch, PlannedRecord};
use proptest::prelude::*;
use serde_json::json;

fn account_rules(action_type: ActionType, match_by: MatchBy) -> RecordRules {
    let definitions = FieldDefinitions::parse(
        &json!({ "fields": [
            { "name": "score", "type": "number" },
            { "name": "since", "type": "date" },
            { "name": "tags", "type": "string[]" },
            { "name": "sfId", "type": "string", "maxLength": 18, "unique": true },
        ]}),
        EntityType::Contact,
    )
    .unwrap();
    RecordRules::new(EntityType::Contact, action_type, match_by, &definitions)
}

#[test]
fn a_change_is_written_back_as_a_client_submits_it() {
    let rules = account_rules(ActionType::Update, MatchBy::Natural);
    let record = json!({
        "email": " Ann@X.io ", "name": null, "score": 2.0, "age": 40,
        "since": "2024-03-20", "tags": {"add": ["a"], "remove": ["b"]},
    });
    let change = RecordChange::parse(&record, &rules).unwrap();
    let submitted = Value::Object(submitted_form(&change, rules.entity, &rules.match_by));
    assert_eq!(
        submitted,
        json!({
            "email": "ann@x.io", "name": null, "score": 2.0, "age": 40,
            "since": "2024-03-20T00:00:00.000Z", "tags": {"add": ["a"], "remove": ["b"]},
        })
    );
    assert_eq!(RecordChange::parse(&submitted, &rules).unwrap(), change);
}

#[test]
fn an_upsert_by_an_external_id_keeps_both_keys() {
    let match_by = MatchBy::ExternalId {
        field: "sfId".into(),
        slot: 1,
    };
    let rules = account_rules(ActionType::Upsert, match_by);
    let record = json!({"sfId": "001A", "email": "b@x.io", "name": "B"});
    let change = RecordChange::parse(&record, &rules).unwrap();
    let submitted = Value::Object(submitted_form(&change, rules.entity, &rules.match_by));
    assert_eq!(
        submitted,
        json!({"sfId": "001A", "email": "b@x.io", "name": "B"})
    );
}

#[test]
fn a_raw_record_is_kept_whole_or_cut_to_whole_fields_and_marked() {
    let small = json!({"email": "not-an-email", "name": "=1+1"});
    let kept = SubmittedRecord::raw(4, &small);
    assert!(!kept.truncated);
    assert_eq!(Value::Object(kept.fields), small);

    let big = json!({"email": "a@x.io", "name": "n".repeat(5_000), "status": "s"});
    let cut = SubmittedRecord::raw(5, &big);
    assert!(cut.truncated);
    assert_eq!(
        Value::Object(cut.fields),
        json!({"email": "a@x.io", "status": "s"})
    );

    let not_object = SubmittedRecord::raw(6, &json!([1, 2]));
    assert!(not_object.truncated && not_object.fields.is_empty());
}

/// A batch of `count` records, each setting `name` to `name`.
fn batch_of_names(count: u32, name: &str) -> Batch {
    let records = (0..count)
        .map(|index| PlannedRecord {
            index,
            change: RecordChange {
                key: format!("r{index}@x.io"),
                natural_key: None,
                fields: [("name", FieldChange::Set(FieldValue::Text(name.to_owned())))]
                    .into_iter()
                    .collect(),
            },
        })
        .collect();
    Batch {
        number: 0,
        records,
        match_by: MatchBy::Natural,
    }
}

#[test]
fn only_the_records_that_did_not_succeed_are_kept_from_a_batch() {
    let rules = account_rules(ActionType::Update, MatchBy::Natural);
    let records = vec![
        json!({"email": "a@x.io", "name": "A"}),
        json!({"email": "b@x.io", "score": 1.5}),
    ];
    let plan = plan_with(&records, rules.clone(), 10);
    let batch: &Batch = &plan.batches[0];
    let outcomes = vec![
        RecordOutcome::new(0, Some("a@x.io".into()), OutcomeCode::Updated, None),
        RecordOutcome::new(1, Some("b@x.io".into()), OutcomeCode::NotFound, None),
    ];
    let kept = batch_submitted(
        batch,
        &outcomes,
        EntityType::Contact,
        batch_room(0, 0, u64::MAX),
    );
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].index, 1);
    assert_eq!(
        Value::Object(kept[0].fields.clone()),
        json!({"email": "b@x.io", "score": 1.5})
    );
}

#[test]
fn a_batch_keeps_records_within_its_byte_budget() {
    let big = "x".repeat(200_000);
    let batch = batch_of_names(60, &big);
    let outcomes = batch.outcomes_all(OutcomeCode::Unprocessed, "cancelled");
    let kept = batch_submitted(
        &batch,
        &outcomes,
        EntityType::Contact,
        batch_room(0, 0, u64::MAX),
    );
    assert_eq!(kept.len(), 60);
    let bytes: usize = kept.iter().map(SubmittedRecord::stored_size).sum();
    assert!(bytes <= BATCH_RECORDS_MAX_BYTES + 60 * 64, "{bytes}");
    assert!(kept.iter().any(|record| record.truncated));
}

#[test]
fn an_action_near_its_kept_bytes_keeps_less_of_each_batch_and_then_nothing() {
    let any = u64::MAX;
    assert_eq!(batch_room(0, 0, any), BATCH_RECORDS_MAX_BYTES);
    assert_eq!(
        batch_room(ACTION_RECORDS_MAX_BYTES - 1000, 0, any),
        1000,
        "the room left, not a whole batch's"
    );
    assert_eq!(batch_room(ACTION_RECORDS_MAX_BYTES, 0, any), 0);
    assert_eq!(batch_room(u64::MAX, 0, any), 0);
    assert_eq!(batch_room(0, 5_000, 6_000), 1_000, "the account's room");
    assert_eq!(
        batch_room(0, 7_000, 6_000),
        0,
        "an account past its limit keeps nothing"
    );
    let batch = batch_of_names(3, "n");
    let outcomes = batch.outcomes_all(OutcomeCode::Unprocessed, "cancelled");
    let kept = batch_submitted(&batch, &outcomes, EntityType::Contact, 0);
    assert_eq!(kept.len(), 3, "every record still has its row");
    assert!(kept
        .iter()
        .all(|record| record.truncated && record.fields.is_empty()));
}

#[test]
fn result_columns_cannot_be_record_fields() {
    for column in RESULT_COLUMNS {
        assert!(is_result_column(column) && is_result_column(&column.to_uppercase()));
        assert!(FieldDefinitions::parse(
            &json!({ "fields": [{ "name": column, "type": "string" }] }),
            EntityType::Contact
        )
        .is_err());
        for entity in EntityType::ALL {
            assert!(!entity.spec().field_names().any(|name| name == column));
        }
    }
    assert!(!is_result_column("status") && !is_result_column("email"));
}

#[test]
fn csv_cells_read_back_as_the_upload_reads_them() {
    assert_eq!(csv_cell(&json!(null)), "#N/A");
    assert_eq!(csv_cell(&json!(["a", "b"])), "a;b");
    assert_eq!(csv_cell(&json!(2.5)), "2.5");
    assert_eq!(csv_cell(&json!("=x")), "=x");
    for lossy in [
        json!("#N/A"),
        json!(" #N/A "),
        json!(""),
        json!([]),
        json!(["a;b"]),
        json!([" a"]),
        json!({"add": ["a"]}),
    ] {
        assert!(!reads_back_from_csv(&lossy), "{lossy}");
    }
    let record = SubmittedRecord {
        index: 0,
        fields: [("tags".to_owned(), json!({"add": ["a"]}))]
            .into_iter()
            .collect(),
        truncated: false,
    };
    assert_eq!(
        KeptFields::of_csv_row(Some(&record)),
        KeptFields::KeptInNdjson
    );
    assert_eq!(KeptFields::of(Some(&record)), KeptFields::Kept);
}

fn a_definition() -> impl Strategy<Value = FieldDefinitions> {
    proptest::collection::vec(crate::fields::tests::a_field(), 0..4).prop_map(|fields| {
        FieldDefinitions {
            fields: fields
                .into_iter()
                .enumerate()
                .map(|(i, mut field)| {
                    field.name = format!("f{i}");
                    field.unique = false;
                    field
                })
                .collect(),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whatever a record planned to, its submission form plans to the same change: a
    /// failed record written to a result file and submitted again does what it meant to.
    #[test]
    fn the_submitted_form_plans_to_the_same_change(
        definitions in a_definition(),
        values in proptest::collection::vec((0usize..4, crate::fields::tests::a_value()), 0..5),
        built_in in proptest::option::of(prop_oneof![Just(json!(null)), (0i64..150).prop_map(|a| json!(a))]),
        action_type in proptest::sample::select(ActionType::ALL.to_vec()),
    ) {
        prop_assume!(FieldDefinitions::parse(&serde_json::to_value(&definitions).unwrap(), EntityType::Contact).is_ok());
        let mut record = Map::new();
        record.insert("email".into(), json!(" A@b.CO"));
        if let Some(age) = built_in {
            record.insert("age".into(), age);
        }
        for (i, value) in values {
            record.insert(format!("f{i}"), value);
        }
        let rules = RecordRules::new(EntityType::Contact, action_type, MatchBy::Natural, &definitions);
        let Ok(change) = RecordChange::parse(&Value::Object(record), &rules) else {
            return Ok(());
        };
        let form = submitted_form(&change, rules.entity, &rules.match_by);
        let submitted = Value::Object(form.clone());
        let again = RecordChange::parse(&submitted, &rules);
        prop_assert_eq!(again.as_ref().ok(), Some(&change), "{} -> {:?}", submitted, again);
        // And through a CSV row, read as an upload reads it, unless the row says it cannot.
        if form.values().all(reads_back_from_csv) {
            let cells: Vec<(String, String)> = form
                .iter()
                .map(|(name, value)| (name.clone(), csv_cell(value).into_owned()))
                .collect();
            let read = crate::record::record_from_cells(
                cells.iter().map(|(name, cell)| (name.as_str(), cell.as_str())),
                &rules.fields,
            );
            let from_csv = RecordChange::parse(&read, &rules);
            prop_assert_eq!(from_csv.as_ref().ok(), Some(&change), "{} -> {} -> {:?}", submitted, read, from_csv);
        }
    }
}
