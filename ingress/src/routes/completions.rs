//! `POST /v1/chat/completions`: the OpenAI request and response shapes, through the same queue
//! (interactive lane) as conversation turns. The job id is in the `x-chatq-job-id` header, so a
//! client can also follow the job with `GET /v1/jobs/{id}` or its events. `x-chatq-cache: hit`
//! or `miss` says whether the reply came from the reply cache, and `x-chatq-cache-tier` beside a
//! hit which tier (`exact` or `semantic`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::cache_control::{insert_cache_headers, no_cache_asked};
use crate::chat_api::ChatCompletionRequest;
use crate::chat_api::stream::chunk_stream;
use crate::error::ApiResult;
use crate::extract::JsonBodyAsSent;
use crate::routes::events::sse_response;
use crate::state::AppState;
use crate::submit::completion::{CompletionAnswer, run_completion};
use crate::submit::idempotency::IdempotencyKey;
use crate::trace_context::RequestTrace;

#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key and body is answered with the first completion."),
        ("Cache-Control" = Option<String>, Header, description = "`no-cache` keeps the request out of the reply cache.")),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion (`chat.completion`), or with `stream: true` server-sent `chat.completion.chunk` events ending in `[DONE]`.",
            content((Object = "application/json"), (crate::openapi::ServerSentEvent = "text/event-stream")),
            headers(
                ("x-chatq-cache" = String, description = "`hit` or `miss`: whether the reply cache answered."),
                ("x-chatq-cache-tier" = String, description = "On a hit, the tier that answered: `exact` (the same request) or `semantic` (a near-duplicate of its last user message).")
            )),
        crate::openapi::ApiErrors))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
    JsonBodyAsSent(mut body, sent): JsonBodyAsSent<ChatCompletionRequest>,
) -> ApiResult<Response> {
    if no_cache_asked(&headers) {
        body.cache = Some(false);
    }
    let key = IdempotencyKey::from_headers(&headers)?;
    let started = run_completion(&state, &caller, body, sent, key, trace).await?;
    let mut response = match started.answer {
        CompletionAnswer::Whole(completion) => Json(completion).into_response(),
        CompletionAnswer::Stream {
            cursor,
            writer,
            slot,
            abandon,
        } => {
            let chunks = chunk_stream(cursor, writer, slot, abandon, state.streams_stop.clone());
            sse_response(chunks, &state)
        }
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&started.job_id.to_string()) {
        headers.insert("x-chatq-job-id", value);
    }
    insert_cache_headers(headers, started.cache);
    if started.replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}
