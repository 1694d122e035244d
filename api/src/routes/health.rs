use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    status: &'static str,
    redis: bool,
    mongodb: bool,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Redis and MongoDB answer; a load balancer should route here only while this is 200.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = Readiness),
    (status = 503, body = Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let redis = tokio::time::timeout(CHECK_TIMEOUT, state.store.ping());
    let mongodb = tokio::time::timeout(CHECK_TIMEOUT, infra::mongo::ping(&state.database));
    let (redis, mongodb) = tokio::join!(redis, mongodb);
    let redis = matches!(redis, Ok(Ok(())));
    let mongodb = matches!(mongodb, Ok(Ok(())));
    let ready = redis && mongodb;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let readiness = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        redis,
        mongodb,
    };
    (status, Json(readiness))
}
