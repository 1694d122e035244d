//! Reading a `POST /bulk-actions` body into a submission, with one precise error code per
//! way it can be wrong. Nothing is written before this has accepted the whole request.

use domain::pacing::{self, Pacing, PacingError};
use domain::{AccountId, ActionType, EntityType, MatchBy, Timestamp};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::ingest::json::{DataShape, Outline};

/// Everything about a submission but its records.
pub struct ActionSettings {
    pub account_id: AccountId,
    pub entity_type: EntityType,
    pub action_type: ActionType,
    pub scheduled_for: Option<Timestamp>,
    pub pacing: Option<Pacing>,
    pub max_records_per_minute: Option<u32>,
    /// `matchBy` as written (absent: the natural key); read against the account's fields
    /// by `match_by` once they are loaded.
    pub match_by: Option<String>,
    /// The action whose records this submission retries (`POST /bulk-actions/{id}/retry`).
    pub retry_of: Option<domain::ActionId>,
}

/// The request body, as documented in the OpenAPI schema. Parsing is done by hand in
/// `parse` so that each mistake gets its own error code.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubmitRequest {
    /// Optional: the API key's account. Another account is `403 account_mismatch`.
    #[schema(example = "acme-corp")]
    account_id: Option<String>,
    #[schema(example = "contact")]
    entity_type: EntityType,
    #[schema(example = "update")]
    action_type: ActionType,
    /// The records, at most `MAX_RECORDS_PER_ACTION`. Each names the key the action
    /// matches by (a contact's `email`, a company's `domain`, an opportunity's or task's
    /// `externalId`; `id` or the external id field with `matchBy`) and the fields to
    /// change: the entity's built-in ones (`GET /fields/{entityType}`) and the account's
    /// own. A contact's record is shown; a record's mistakes fail that record, not the
    /// request.
    data: Vec<ContactRecord>,
    /// RFC 3339; in the future, the action waits until then.
    #[schema(value_type = Option<String>, format = DateTime, example = "2030-03-20T10:00:00Z")]
    scheduled_for: Option<String>,
    /// Drip mode: at most `batchSize` records every `intervalSeconds` (below the account's
    /// processing limit). Batches are no larger than `batchSize`.
    pacing: Option<Pacing>,
    /// This action's own ceiling on records applied per minute, below the account's.
    #[schema(minimum = 1, maximum = 10000000)]
    max_records_per_minute: Option<u32>,
    /// The field records are matched to documents by, and deduplicated by: the entity's
    /// natural key (default; `natural` or its name, e.g. `email`, `domain`, `externalId`),
    /// `id` (the document `_id`; `update` and `delete`), or `externalId:<field>`, an
    /// account's `string` field defined `"unique": true` (`update`, `upsert`, `delete`; the
    /// platform keeps it unique per account).
    #[schema(example = "email")]
    match_by: Option<String>,
}

/// One contact record. Unknown fields, `$`-prefixed or dotted keys, and wrong types fail
/// the record (not the request) with a code in the action's logs. A field left out is left
/// as it is; `null` removes it from the contact (in CSV: the cell `#N/A`; an empty cell
/// leaves it).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
pub struct ContactRecord {
    /// The key; it cannot be cleared.
    #[schema(example = "ann@example.com")]
    email: String,
    /// At most 256 characters; `null` clears it.
    name: Option<String>,
    /// `null` clears it.
    #[schema(minimum = 0, maximum = 150)]
    age: Option<i64>,
    /// At most 64 characters; `null` clears it.
    status: Option<String>,
}

/// The settings of a streamed upload (`application/x-ndjson`, `text/csv`), as query
/// parameters: the body holds only records.
pub const QUERY_SETTINGS: [&str; 8] = [
    "accountId",
    "entityType",
    "actionType",
    "scheduledFor",
    "pacingBatchSize",
    "pacingIntervalSeconds",
    "maxRecordsPerMinute",
    "matchBy",
];

pub const FIELDS: [&str; 8] = [
    "accountId",
    "entityType",
    "actionType",
    "data",
    "scheduledFor",
    "pacing",
    "maxRecordsPerMinute",
    "matchBy",
];

/// The settings of a JSON body, from its outline, and the refusal of a body whose `data`
/// is not what it must be. `caller` is the API key's account: the body may name it in
/// `accountId` (any other account is `403 account_mismatch`) or leave it out.
pub fn settings_of(
    outline: &Outline,
    max_records: usize,
    max_value_bytes: usize,
    caller: &AccountId,
) -> Result<ActionSettings, ApiError> {
    if !outline.is_object {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBody,
            "request body must be a JSON object",
        ));
    }
    if let Some(unknown) = &outline.unknown {
        return Err(ApiError::unknown_field(unknown, &FIELDS));
    }
    if let Some(field) = &outline.oversized {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("{field} is longer than {max_value_bytes} bytes"),
        )
        .with_details(json!({ "field": field, "limit": max_value_bytes })));
    }
    let settings = parse_settings(&outline.settings, caller)?;
    match outline.data {
        DataShape::Absent | DataShape::Null => Err(missing_field("data")),
        DataShape::NotArray => Err(invalid_field("data", "data must be an array of records")),
        DataShape::Array { records: 0, .. } => Err(ApiError::bad_request(
            ErrorCode::EmptyData,
            "data must contain at least one record",
        )),
        DataShape::Array { records, .. } if records > max_records => Err(ApiError::bad_request(
            ErrorCode::TooManyRecords,
            format!("an action may hold at most {max_records} records"),
        )
        .with_details(json!({ "limit": max_records, "received": records }))),
        DataShape::Array { .. } => Ok(settings),
    }
}

/// The settings of a streamed upload, from its query parameters. Numbers arrive as text
/// and are read as JSON numbers, so every mistake gets the code it gets in a JSON body.
pub fn parse_query(
    pairs: Vec<(String, String)>,
    caller: &AccountId,
) -> Result<ActionSettings, ApiError> {
    let params = crate::query::QueryParams::parse(pairs, &QUERY_SETTINGS)?;
    let mut object = Map::new();
    for field in [
        "accountId",
        "entityType",
        "actionType",
        "scheduledFor",
        "matchBy",
    ] {
        if let Some(raw) = params.text(field) {
            object.insert(field.to_owned(), Value::from(raw));
        }
    }
    let number = |raw: &str| {
        raw.parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(raw))
    };
    if let Some(raw) = params.text("maxRecordsPerMinute") {
        object.insert("maxRecordsPerMinute".to_owned(), number(raw));
    }
    let batch_size = params.text("pacingBatchSize");
    let interval = params.text("pacingIntervalSeconds");
    if batch_size.is_some() || interval.is_some() {
        let mut pacing = Map::new();
        if let Some(raw) = batch_size {
            pacing.insert("batchSize".to_owned(), number(raw));
        }
        if let Some(raw) = interval {
            pacing.insert("intervalSeconds".to_owned(), number(raw));
        }
        object.insert("pacing".to_owned(), Value::Object(pacing));
    }
    parse_settings(&object, caller)
}

/// The settings in a JSON object: a request body, or query parameters made into one.
fn parse_settings(
    object: &Map<String, Value>,
    caller: &AccountId,
) -> Result<ActionSettings, ApiError> {
    let account_id = match object.get("accountId") {
        None | Some(Value::Null) => caller.clone(),
        Some(Value::String(raw)) => {
            let named = AccountId::parse(raw)
                .map_err(|error| invalid_field("accountId", error.to_string()))?;
            if &named != caller {
                return Err(ApiError::account_mismatch(&named));
            }
            named
        }
        Some(_) => return Err(invalid_field("accountId", "accountId must be a string")),
    };

    let entity_raw = required_string(object, "entityType")?;
    let entity_type = entity_type(entity_raw)?;

    let action_raw = required_string(object, "actionType")?;
    let action_type = ActionType::parse(action_raw).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::UnsupportedActionType,
            format!(
                "actionType {} is not supported",
                domain::text::quoted(action_raw)
            ),
        )
        .with_details(
            json!({ "field": "actionType", "supported": ActionType::ALL.map(|t| t.as_str()) }),
        )
    })?;

    let scheduled_for = scheduled_for(object.get("scheduledFor"))?;
    let (pacing, max_records_per_minute) =
        pace(object.get("pacing"), object.get("maxRecordsPerMinute"))?;
    let match_by = match object.get("matchBy") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Some(raw.clone()),
        Some(_) => return Err(invalid_match_by("matchBy must be a string")),
    };
    Ok(ActionSettings {
        account_id,
        entity_type,
        action_type,
        scheduled_for,
        pacing,
        max_records_per_minute,
        match_by,
        retry_of: None,
    })
}

/// What a submission's records are checked against: the account's field definition in
/// force now (the one `Created` records, whatever the account defines while the records
/// are read), the key they match by, and the rules built of both.
pub struct RulesInForce {
    pub custom_fields: domain::fields::FieldDefinitions,
    pub match_by: MatchBy,
    pub rules: domain::RecordRules,
}

pub async fn rules_in_force(
    store: &infra::Submissions,
    settings: &ActionSettings,
) -> Result<RulesInForce, ApiError> {
    let custom_fields = store
        .field_definitions(&settings.account_id, settings.entity_type)
        .await?;
    let match_by = match_by(settings, &custom_fields)?;
    let rules = domain::RecordRules::new(
        settings.entity_type,
        settings.action_type,
        match_by.clone(),
        &custom_fields,
    );
    Ok(RulesInForce {
        custom_fields,
        match_by,
        rules,
    })
}

/// The key the submission matches by, read against the account's fields (`custom`, the
/// definition in force), and allowed for its action type.
pub fn match_by(
    settings: &ActionSettings,
    custom: &domain::fields::FieldDefinitions,
) -> Result<MatchBy, ApiError> {
    let Some(raw) = &settings.match_by else {
        return Ok(MatchBy::Natural);
    };
    let match_by = MatchBy::parse(raw, settings.entity_type, custom)
        .map_err(|error| invalid_match_by(error.to_string()))?;
    if !match_by.allows(settings.action_type) {
        return Err(invalid_match_by(format!(
            "an {} action cannot match by {}: a document id matches update and delete, an \
             external id update, upsert and delete",
            settings.action_type.as_str(),
            match_by.as_text()
        )));
    }
    Ok(match_by)
}

fn invalid_match_by(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidMatchBy, message)
        .with_details(json!({ "field": "matchBy" }))
}

/// Reads `scheduledFor` (absent or null: none).
pub fn scheduled_for(raw: Option<&Value>) -> Result<Option<Timestamp>, ApiError> {
    match raw {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(raw)) => Timestamp::parse_rfc3339(raw).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidScheduledFor,
                "scheduledFor must be an RFC 3339 date-time, e.g. 2030-03-20T10:00:00Z",
            )
            .with_details(json!({ "field": "scheduledFor" }))
        }),
        Some(_) => Err(ApiError::bad_request(
            ErrorCode::InvalidScheduledFor,
            "scheduledFor must be a string",
        )
        .with_details(json!({ "field": "scheduledFor" }))),
    }
}

/// Reads `pacing` and `maxRecordsPerMinute` (absent or null: none).
pub fn pace(
    pacing: Option<&Value>,
    max_records_per_minute: Option<&Value>,
) -> Result<(Option<Pacing>, Option<u32>), ApiError> {
    let invalid = |error: PacingError| {
        ApiError::bad_request(ErrorCode::InvalidPacing, error.to_string())
            .with_details(json!({ "field": error.field }))
    };
    let pacing = match pacing {
        None | Some(Value::Null) => None,
        Some(raw) => Some(Pacing::parse(raw).map_err(invalid)?),
    };
    let max = match max_records_per_minute {
        None | Some(Value::Null) => None,
        Some(raw) => Some(pacing::parse_max_records_per_minute(raw).map_err(invalid)?),
    };
    Ok((pacing, max))
}

fn required_string<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(missing_field(field)),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(invalid_field(field, format!("{field} must be a string"))),
    }
}

fn missing_field(field: &'static str) -> ApiError {
    ApiError::bad_request(ErrorCode::MissingField, format!("{field} is required"))
        .with_details(json!({ "field": field }))
}

fn invalid_field(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_field(field, message)
}

/// An `entityType` the platform knows; the answer to any other lists the ones it does.
pub fn entity_type(raw: &str) -> Result<EntityType, ApiError> {
    EntityType::parse(raw).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::UnsupportedEntityType,
            format!("entityType {} is not supported", domain::text::quoted(raw)),
        )
        .with_details(
            json!({ "field": "entityType", "supported": EntityType::ALL.map(|t| t.as_str()) }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> &'static str {
        let settings = crate::ingest::json::read_outline(body.as_bytes(), 1024)
            .and_then(|outline| settings_of(&outline, 10, 1024, &AccountId::parse("a").unwrap()));
        match settings {
            Ok(_) => "ok",
            Err(error) => error.code().as_str(),
        }
    }

    #[test]
    fn each_mistake_has_its_code() {
        let ok = r#"{"accountId":"a","entityType":"contact","actionType":"update","data":[{"email":"a@b.co"}]}"#;
        assert_eq!(code(ok), "ok");
        assert_eq!(code("{"), "malformed_json");
        assert_eq!(code("[]"), "invalid_body");
        assert_eq!(code(r#"{"entityType":"contact"}"#), "missing_field");
        assert_eq!(code(r#"{"accountId":"b"}"#), "account_mismatch");
        assert_eq!(code(r#"{"accountId":5}"#), "invalid_field");
        assert_eq!(code(r#"{"accountId":"a b"}"#), "invalid_field");
        assert_eq!(
            code(r#"{"accountId":"a","entityType":"deal"}"#),
            "unsupported_entity_type"
        );
        assert_eq!(
            code(r#"{"accountId":"a","entityType":"contact","actionType":"merge"}"#),
            "unsupported_action_type"
        );
        assert_eq!(
            code(r#"{"accountId":"a","entityType":"contact","actionType":"update","data":[]}"#),
            "empty_data"
        );
        assert_eq!(
            code(
                r#"{"accountId":"a","entityType":"contact","actionType":"update","data":[1,2,3,4,5,6,7,8,9,10,11]}"#
            ),
            "too_many_records"
        );
        assert_eq!(
            code(
                r#"{"accountId":"a","entityType":"contact","actionType":"update","data":[1],"scheduledFor":"soon"}"#
            ),
            "invalid_scheduled_for"
        );
        assert_eq!(code(r#"{"accountId":"a","$where":"1"}"#), "unknown_field");
        assert_eq!(
            code(
                r#"{"accountId":"a","entityType":"contact","actionType":"update","data":[1],"pacing":{"batchSize":0,"intervalSeconds":5}}"#
            ),
            "invalid_pacing"
        );
        assert_eq!(
            code(
                r#"{"accountId":"a","entityType":"contact","actionType":"update","data":[1],"maxRecordsPerMinute":"fast"}"#
            ),
            "invalid_pacing"
        );
    }
}
