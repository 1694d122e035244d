//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they
//! return, so it cannot drift from the code.

use axum::Json;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{Ref, RefOr};
use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{
    actions, admin, control, events, fields, health, logs, results, retry, submit, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "CRM Bulk Action Platform", description = "Submit bulk changes to CRM contacts and follow them record by record. Every error body is `{\"error\": {\"code\", \"message\", \"details\"}}`."),
    paths(
        submit::submit,
        actions::get_action,
        actions::get_stats,
        actions::list_actions,
        events::action_events,
        events::account_events,
        control::cancel,
        control::pause,
        control::resume,
        control::amend,
        logs::get_logs,
        results::get_results,
        retry::retry,
        fields::get_fields,
        fields::put_fields,
        webhooks::create_webhook,
        webhooks::list_webhooks,
        webhooks::get_webhook,
        webhooks::delete_webhook,
        webhooks::rotate_secret,
        webhooks::list_deliveries,
        webhooks::redeliver,
        admin::get_limits,
        admin::put_limits,
        admin::create_key,
        admin::list_keys,
        admin::revoke_key,
        health::healthz,
        health::readyz,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&SecuritySchemes),
    tags((name = "bulk-actions"), (name = "fields"), (name = "webhooks"), (name = "admin"), (name = "health")),
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Every /bulk-actions, /fields and /webhooks operation needs an API key, and every operation behind a
        // credential can answer with the errors any such request can get.
        for (path, item) in openapi.paths.paths.iter_mut() {
            let bulk = path.starts_with("/bulk-actions")
                || path.starts_with("/fields")
                || path.starts_with("/webhooks");
            let admin = path.starts_with("/admin");
            if !bulk && !admin {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let scheme = if bulk { "api_key" } else { "admin_token" };
                operation.security =
                    Some(vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
                let mut common = vec![
                    ("401", "No valid credential (`unauthorized`)"),
                    (
                        "503",
                        "Redis or MongoDB unavailable; retry (`dependency_unavailable`)",
                    ),
                ];
                if bulk {
                    common.push((
                        "429",
                        "The account's request budget is spent; see `Retry-After` (`rate_limited`)",
                    ));
                }
                for (status, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
