//! The router: every route of the public API, and the fallbacks that keep unknown routes and
//! methods in the OpenAI error shape.

mod admin;
mod batches;
mod completions;
pub(crate) mod conversations;
pub(crate) mod events;
mod files;
mod health;
mod jobs;
mod messages;
pub(crate) mod models;
mod operators;
mod responses;
mod web;
mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::observe;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_request_bytes;
    let api = Router::new()
        .route(
            "/v1/conversations",
            post(conversations::create).get(conversations::list),
        )
        .route(
            "/v1/conversations/{id}",
            get(conversations::get)
                .patch(conversations::rename)
                .delete(conversations::delete),
        )
        .route(
            "/v1/conversations/{id}/messages",
            get(conversations::history)
                .post(messages::send)
                .delete(conversations::clear_history),
        )
        .route(
            "/v1/messages/{id}/feedback",
            get(messages::get_feedback).post(messages::feedback),
        )
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/admin/dead-letters", get(admin::dead_letters))
        .route(
            "/v1/admin/dead-letters/{job_id}/retry",
            post(admin::retry_dead_letter),
        )
        .route("/v1/jobs/{id}/events", get(events::stream))
        .route("/v1/chat/completions", post(completions::create))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route(
            "/v1/files",
            // An upload is streamed to storage under its own limit (max_file_bytes), not read
            // whole under max_request_bytes (crate::body_limit lets it through).
            post(files::upload)
                .layer(DefaultBodyLimit::disable())
                .get(files::list),
        )
        .route("/v1/files/{id}", get(files::get).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::get))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route("/v1/admin/queue", get(operators::queue))
        .route("/v1/admin/workers", get(operators::workers))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(observe::metrics))
        .route("/", get(web::page))
        .route("/assets/chat.css", get(web::style))
        .route("/assets/chat.js", get(web::script))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            crate::body_limit::BodyLimits {
                max_bytes: body_limit,
                read_timeout: state.body_read_timeout,
            },
            crate::body_limit::limit_body,
        ))
        .layer(middleware::from_fn(observe::record));
    api.with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "Unknown route '{}'. The API is documented in the README.",
        uri.path()
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("'{method} {}' is not supported.", uri.path()))
}
