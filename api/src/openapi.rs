//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they
//! return, so it cannot drift from the code.

use axum::Json;
use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{actions, admin, control, health, logs};

#[derive(OpenApi)]
#[openapi(
    info(title = "CRM Bulk Action Platform", description = "Submit bulk changes to CRM contacts and follow them record by record. Every error body is `{\"error\": {\"code\", \"message\", \"details\"}}`."),
    paths(
        actions::submit,
        actions::get_action,
        actions::get_stats,
        actions::list_actions,
        control::cancel,
        control::pause,
        control::resume,
        control::amend,
        logs::get_logs,
        admin::get_limits,
        admin::put_limits,
        health::healthz,
        health::readyz,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&AdminToken),
    tags((name = "bulk-actions"), (name = "admin"), (name = "health")),
)]
pub struct ApiDoc;

struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
