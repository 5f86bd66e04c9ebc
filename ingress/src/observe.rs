//! Request metrics and `GET /metrics`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chatq_common::metrics as names;

use crate::state::AppState;

/// Middleware: counts requests by route template (never by raw path, which holds ids) and
/// status, and times them (to the first byte, for streams).
pub async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(names::HTTP_DURATION, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus metrics (keep this route off the public network).", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!(names::EVENT_STREAMS_OPEN).set(state.event_streams.open_count() as f64);
    let body = chatq_common::metrics::install()
        .map(|handle| chatq_common::metrics::render(&handle))
        .unwrap_or_default();
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
