//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they
//! return, so it cannot drift from the code.

use axum::Json;
use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{actions, health, logs};

#[derive(OpenApi)]
#[openapi(
    info(title = "CRM Bulk Action Platform", description = "Submit bulk changes to CRM contacts and follow them record by record. Every error body is `{\"error\": {\"code\", \"message\", \"details\"}}`."),
    paths(
        actions::submit,
        actions::get_action,
        actions::get_stats,
        actions::list_actions,
        logs::get_logs,
        health::healthz,
        health::readyz,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    tags((name = "bulk-actions"), (name = "health")),
)]
pub struct ApiDoc;

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
