//! An account's custom fields per entity type: `GET` and `PUT /fields/{entityType}`, behind
//! the account's API key. Records of later submissions are checked against the definition
//! in force when they are submitted.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use domain::fields::{FieldDefinition, FieldDefinitions};
use domain::EntityType;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::extract::JsonObject;
use crate::{submission, AppState};

/// An account's custom fields for one entity type, beside what every account has.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldsView {
    #[schema(value_type = String, example = "contact")]
    entity_type: &'static str,
    /// The account's own fields.
    fields: Vec<FieldDefinition>,
    /// The field that identifies a record of this type (the default `matchBy`).
    #[schema(value_type = String, example = "email")]
    natural_key: &'static str,
    /// The entity's own fields, the same for every account (read-only here).
    built_in_fields: Vec<FieldDefinition>,
}

/// Read the account's custom fields of an entity type (none defined: an empty list).
#[utoipa::path(get, path = "/fields/{entityType}", tag = "fields",
    params(("entityType" = String, Path, description = "e.g. `contact`")),
    responses(
        (status = 200, body = FieldsView),
        (status = 400, description = "Unknown entity type (`unsupported_entity_type`)", body = ErrorBody),
    ))]
pub async fn get_fields(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(entity): Path<String>,
) -> Result<Json<FieldsView>, ApiError> {
    let entity = submission::entity_type(&entity)?;
    let definitions = state
        .store
        .field_definitions(&caller.account, entity)
        .await?;
    Ok(Json(view(entity, definitions)))
}

/// Define the account's custom fields of an entity type, replacing the earlier definition.
///
/// `{"fields": [{"name", "type", "maxLength"?, "min"?, "max"?, "enum"?, "unique"?}]}`; `type`
/// is one of `string`, `number`, `integer`, `boolean`, `date`, `string[]`. At most 100
/// fields; the whole definition is refused for one mistake. Actions already submitted keep
/// the definition they were checked against. A `unique` string field is an external id
/// (`matchBy: externalId:<name>`): it is bound for good to one of the entity's 3 slots
/// (shown as `slot`), so an account has at most 3 such names per entity type, ever.
#[utoipa::path(put, path = "/fields/{entityType}", tag = "fields",
    params(("entityType" = String, Path, description = "e.g. `contact`")),
    request_body = FieldDefinitions,
    responses(
        (status = 200, body = FieldsView),
        (status = 400, description = "`invalid_field_definition` (details name the field), `unsupported_entity_type`", body = ErrorBody),
    ))]
pub async fn put_fields(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(entity): Path<String>,
    JsonObject(body): JsonObject<Value>,
) -> Result<Json<FieldsView>, ApiError> {
    let entity = submission::entity_type(&entity)?;
    let mut definitions = FieldDefinitions::parse(&body, entity).map_err(|error| {
        ApiError::bad_request(
            ErrorCode::InvalidFieldDefinition,
            format!("field {}: {}", error.field, error.message),
        )
        .with_details(json!({ "field": error.field }))
    })?;
    for field in definitions.fields.iter_mut().filter(|field| field.unique) {
        let slot = state
            .store
            .external_id_slot(&caller.account, entity, &field.name)
            .await?;
        let Some(slot) = slot else {
            let held = state
                .store
                .external_id_slots(&caller.account, entity)
                .await?;
            let names: Vec<&str> = held.iter().map(|(_, name)| name.as_str()).collect();
            return Err(ApiError::bad_request(
                ErrorCode::InvalidFieldDefinition,
                format!(
                    "field {}: a {} has {} unique fields at most, for good, and they are {}",
                    field.name,
                    entity.as_str(),
                    domain::fields::MAX_UNIQUE_FIELDS,
                    names.join(", ")
                ),
            )
            .with_details(json!({ "field": field.name, "uniqueFields": names })));
        };
        field.slot = Some(slot);
    }
    state
        .store
        .put_field_definitions(&caller.account, entity, &definitions)
        .await?;
    Ok(Json(view(entity, definitions)))
}

fn view(entity: EntityType, definitions: FieldDefinitions) -> FieldsView {
    let spec = entity.spec();
    FieldsView {
        entity_type: entity.as_str(),
        fields: definitions.fields,
        natural_key: spec.natural_key,
        built_in_fields: spec.fields.iter().map(FieldDefinition::from).collect(),
    }
}
