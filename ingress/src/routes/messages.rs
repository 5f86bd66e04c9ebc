//! Sending a message (record, publish, answer 202) and feedback on replies.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatq_common::db::feedback::{self, FeedbackOutcome};
use chatq_common::ids::{ConversationId, MessageId};
use chatq_common::reply_cache;

use crate::auth::Caller;
use crate::cache_control::no_cache_asked;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, JsonBody};
use crate::state::AppState;
use crate::submit::idempotency::IdempotencyKey;
use crate::submit::turn::{TurnRequest, send_turn};
use crate::trace_context::RequestTrace;
use crate::validate::{Feedback, SendMessage};
use crate::views::{FeedbackView, TurnView};
use crate::waiting::preferred_wait;

/// `POST /v1/conversations/{id}/messages`: records the message and its job, queues the job and
/// answers 202 with both and `Location: /v1/jobs/{id}` (or 200 with the finished job, given
/// `Prefer: wait=N`). A retry with the same `Idempotency-Key` is answered with the first job,
/// marked `Idempotent-Replayed: true`.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = ConversationId, Path, description = "The conversation's id."),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key and body is answered with the first job."),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: answer when the job ends, within N seconds."),
        ("Cache-Control" = Option<String>, Header, description = "`no-cache` keeps the request out of the reply cache.")),
    request_body = SendMessage,
    responses(
        (status = 202, description = "Recorded and queued.", body = TurnView,
            headers(("Location" = String, description = "The job: `/v1/jobs/{id}`."))),
        (status = 200, description = "The finished job, given `Prefer: wait=N`.", body = TurnView),
        crate::openapi::ApiErrors))]
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(conversation): IdPath<ConversationId>,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<SendMessage>,
) -> ApiResult<Response> {
    if no_cache_asked(&headers) {
        body.cache = Some(false);
    }
    let turn = TurnRequest {
        conversation,
        body,
        key: IdempotencyKey::from_headers(&headers)?,
        wait: preferred_wait(&headers).map(|secs| secs.min(state.limits.max_wait_secs)),
        trace,
    };
    let answer = send_turn(&state, &caller, turn).await?;
    let location = format!("/v1/jobs/{}", answer.job.id);
    let body = Json(TurnView {
        job: answer.job,
        message: answer.message,
    });
    let mut response = match answer.waited {
        Some(secs) => {
            let mut response = body.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("wait={secs}")) {
                response.headers_mut().insert("preference-applied", value);
            }
            response
        }
        None => (StatusCode::ACCEPTED, [(header::LOCATION, location)], body).into_response(),
    };
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `GET /v1/messages/{id}/feedback`: the rating given on a reply (404 when none was given).
#[utoipa::path(get, path = "/v1/messages/{id}/feedback", tag = "conversations", params(("id" = MessageId, Path, description = "The message's id.")),
    responses((status = 200, description = "The rating given on the reply.", body = FeedbackView), crate::openapi::ApiErrors))]
pub async fn get_feedback(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(message): IdPath<MessageId>,
) -> ApiResult<Json<FeedbackView>> {
    feedback::get(&state.pool, caller.tenant, message)
        .await?
        .map(|row| Json(row.into()))
        .ok_or_else(|| ApiError::NotFound(format!("No feedback was given on message '{message}'.")))
}

/// `POST /v1/messages/{id}/feedback`: one rating per reply; giving it again replaces it. A
/// rating down evicts the cached reply the message was served from, if any, so it is asked of
/// the provider afresh next time.
#[utoipa::path(post, path = "/v1/messages/{id}/feedback", tag = "conversations", params(("id" = MessageId, Path, description = "The message's id.")),
    request_body = Feedback,
    responses(
        (status = 201, description = "The rating, given for the first time.", body = FeedbackView),
        (status = 200, description = "The rating, replacing an earlier one.", body = FeedbackView),
        crate::openapi::ApiErrors))]
pub async fn feedback(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(message): IdPath<MessageId>,
    JsonBody(body): JsonBody<Feedback>,
) -> ApiResult<(StatusCode, Json<FeedbackView>)> {
    body.validate()?;
    match feedback::upsert(
        &state.pool,
        caller.tenant,
        message,
        body.rating,
        body.comment.as_deref(),
    )
    .await?
    {
        FeedbackOutcome::Saved(row) => {
            if body.rating < 0 {
                evict_cached_reply(&state, message).await;
            }
            Ok((StatusCode::CREATED, Json(row.into())))
        }
        FeedbackOutcome::NotFound => Err(ApiError::not_found("message", message)),
        FeedbackOutcome::NotAnAssistantMessage => Err(ApiError::invalid(
            "Feedback can only be given on assistant messages (replies).",
            "message_id",
        )),
    }
}

/// Drops the cached reply `message` was served from. The rating is recorded either way: a cache
/// that cannot be reached only means the reply stays until its TTL.
async fn evict_cached_reply(state: &AppState, message: MessageId) {
    match reply_cache::evict_message(&state.nats, &state.jetstream, &state.topology, message).await
    {
        Ok(true) => tracing::info!(%message, "a cached reply was rated down and evicted"),
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(%message, error = %err, "cannot evict a cached reply rated down");
        }
    }
}
