//! `/healthz` (the process is alive) and `/readyz` (it can do its job: Postgres, NATS and the
//! job stream all answer).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "The process is alive.", body = Object)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Postgres, NATS and the job stream are reachable.", body = Object),
        (status = 503, description = "One of them is not; the body says which.", body = Object)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres =
        tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&state.pool))
            .await
            .is_ok_and(|r| r.is_ok());
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let stream = nats
        && tokio::time::timeout(
            CHECK_TIMEOUT,
            state.jetstream.get_stream(state.topology.jobs_stream()),
        )
        .await
        .is_ok_and(|r| r.is_ok());
    let ready = postgres && nats && stream;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": { "postgres": word(postgres), "nats": word(nats), "job_stream": word(stream) },
        })),
    )
}
