//! The Responses API (`/v1/responses`): handlers over `crate::responses`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chatq_common::ids::ResponseId;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, JsonBody, QueryParams};
use crate::responses::create::{Created, create_response};
use crate::responses::request::CreateResponse;
use crate::responses::stored::{self, ItemsPage};
use crate::responses::stream::{ResponseStream, sse_events};
use crate::routes::events::sse_response;
use crate::state::AppState;
use crate::trace_context::RequestTrace;

#[utoipa::path(post, path = "/v1/responses", tag = "responses",
    request_body = CreateResponse,
    responses(
        (status = 200, description = "The response object, or with `stream: true` its events (`response.created`, …, `response.completed`).",
            content((Object = "application/json"), (crate::openapi::ServerSentEvent = "text/event-stream"))),
        crate::openapi::ApiErrors))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    RequestTrace(trace): RequestTrace,
    JsonBody(body): JsonBody<CreateResponse>,
) -> ApiResult<Response> {
    Ok(match create_response(&state, &caller, body, trace).await? {
        Created::Object(object) => Json(object).into_response(),
        Created::Stream(stream) => stream_response(*stream, &state),
    })
}

fn stream_response(stream: ResponseStream, state: &AppState) -> Response {
    sse_response(sse_events(stream, state.streams_stop.clone()), state)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RetrieveQuery {
    stream: Option<bool>,
    starting_after: Option<u64>,
    /// Accepted for compatibility; events are never obfuscated.
    include_obfuscation: Option<bool>,
}

#[utoipa::path(get, path = "/v1/responses/{id}", tag = "responses", params(("id" = ResponseId, Path, description = "The response's id."), RetrieveQuery),
    responses(
        (status = 200, description = "The response object, or with `stream=true` its events after `starting_after`.",
            content((Object = "application/json"), (crate::openapi::ServerSentEvent = "text/event-stream"))),
        crate::openapi::ApiErrors))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<ResponseId>,
    QueryParams(query): QueryParams<RetrieveQuery>,
) -> ApiResult<Response> {
    let _ = query.include_obfuscation;
    if query.stream == Some(true) {
        let stream = stored::events(&state, &caller, id, query.starting_after).await?;
        return Ok(stream_response(stream, &state));
    }
    if query.starting_after.is_some() {
        return Err(ApiError::invalid(
            "Invalid 'starting_after': only allowed when 'stream' is true.",
            "starting_after",
        ));
    }
    Ok(Json(stored::retrieve(&state, &caller, id).await?).into_response())
}

#[utoipa::path(post, path = "/v1/responses/{id}/cancel", tag = "responses", params(("id" = ResponseId, Path, description = "The response's id.")),
    responses((status = 200, description = "The response, cancelled.", body = Object), crate::openapi::ApiErrors))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<ResponseId>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(stored::cancel(&state, &caller, id).await?))
}

#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "responses", params(("id" = ResponseId, Path, description = "The response's id.")),
    responses((status = 200, description = "`{\"id\", \"object\": \"response\", \"deleted\": true}`.", body = Object), crate::openapi::ApiErrors))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<ResponseId>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(stored::delete(&state, &caller, id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ItemsQuery {
    limit: Option<usize>,
    order: Option<String>,
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/responses/{id}/input_items", tag = "responses", params(("id" = ResponseId, Path, description = "The response's id."), ItemsQuery),
    responses((status = 200, description = "A list of the response's input items.", body = Object), crate::openapi::ApiErrors))]
pub async fn input_items(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<ResponseId>,
    QueryParams(query): QueryParams<ItemsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid_with_code(
            format!("Invalid 'limit': {limit} is not between 1 and 100."),
            "limit",
            "invalid_value",
        ));
    }
    let ascending = match query.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ApiError::invalid_with_code(
                format!("Invalid 'order': '{other}' is not 'asc' or 'desc'."),
                "order",
                "invalid_value",
            ));
        }
    };
    let page = ItemsPage {
        limit,
        ascending,
        after: query.after,
    };
    Ok(Json(stored::input_items(&state, &caller, id, page).await?))
}
