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
use axum::{Extension, middleware};
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::observe;
use crate::openapi::{self, ApiDoc};
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_request_bytes;
    // Every handler is mounted through `routes!`, which reads its `#[utoipa::path]`: the path it
    // is served on and its entry in the OpenAPI document are one and the same.
    let (api, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(conversations::create, conversations::list))
        .routes(routes!(
            conversations::get,
            conversations::rename,
            conversations::delete
        ))
        .routes(routes!(
            conversations::history,
            messages::send,
            conversations::clear_history
        ))
        .routes(routes!(messages::get_feedback, messages::feedback))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::cancel))
        .routes(routes!(events::stream))
        .routes(routes!(admin::dead_letters))
        .routes(routes!(admin::retry_dead_letter))
        .routes(routes!(completions::create))
        .routes(routes!(responses::create))
        .routes(routes!(responses::get, responses::delete))
        .routes(routes!(responses::cancel))
        .routes(routes!(responses::input_items))
        // An upload is streamed to storage under its own limit (max_file_bytes), not read whole
        // under max_request_bytes (crate::body_limit lets it through).
        .routes(routes!(files::upload).layer(DefaultBodyLimit::disable()))
        .routes(routes!(files::list))
        .routes(routes!(files::get, files::delete))
        .routes(routes!(files::content))
        .routes(routes!(batches::create, batches::list))
        .routes(routes!(batches::get))
        .routes(routes!(batches::cancel))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::delete))
        .routes(routes!(models::list))
        .routes(routes!(models::get))
        .routes(routes!(operators::queue))
        .routes(routes!(operators::workers))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(observe::metrics))
        .routes(routes!(web::page))
        .routes(routes!(web::style))
        .routes(routes!(web::script))
        .routes(routes!(openapi::document))
        .split_for_parts();
    api.method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            crate::body_limit::BodyLimits {
                max_bytes: body_limit,
                read_timeout: state.body_read_timeout,
            },
            crate::body_limit::limit_body,
        ))
        .layer(middleware::from_fn(observe::record))
        .layer(Extension(openapi::Document::render(&document)))
        .with_state(state)
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
