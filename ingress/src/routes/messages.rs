//! Sending a message (record, publish, answer 202) and feedback on replies.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatq_common::batch::Unanswered;
use chatq_common::db::feedback::{self, FeedbackOutcome};
use chatq_common::db::jobs::batch::OwnedTurn;
use chatq_common::db::jobs::{self, EnqueueOutcome, JobRow};
use chatq_common::db::messages;
use chatq_common::ids::{ConversationId, JobId, MessageId};
use chatq_common::job::{JobRequest, JobStatus, Lane};
use chatq_common::queue::{PublishJobError, publish_job};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, JsonBody};
use crate::state::AppState;
use crate::validate::{Feedback, SendMessage, check_content, check_idempotency_key};
use crate::views::{FeedbackView, JobView, MessageView};
use crate::waiter::{JobWaiter, preferred_wait};

/// `POST /v1/conversations/{id}/messages`: records the message and its job, queues the job and
/// answers 202 with both (or 200 with the finished job, given `Prefer: wait=N`).
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(conversation): IdPath<ConversationId>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SendMessage>,
) -> ApiResult<Response> {
    let settings = &state.settings;
    check_content("content", &body.content, settings)?;
    let params = body.sampling().into_params(settings)?;
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|value| {
            let key = value.to_str().map_err(|_| {
                ApiError::invalid(
                    "Invalid 'Idempotency-Key' header: use printable ASCII.",
                    "Idempotency-Key",
                )
            })?;
            check_idempotency_key(key).map(|()| key.to_owned())
        })
        .transpose()?;
    // What the key stands for: this conversation and this body, so reusing the key for another
    // request is refused instead of silently answered with the first one.
    let request_hash = idempotency_key.as_ref().map(|_| {
        let mut hash = Sha256::new();
        hash.update(conversation.to_string().as_bytes());
        hash.update(serde_json::to_vec(&body).unwrap_or_default());
        hash.finalize().to_vec()
    });
    let wait = preferred_wait(&headers).map(|secs| secs.min(settings.max_wait_secs));
    // The queue was full a moment ago: refuse before recording anything. A retry that carries
    // an idempotency key goes on: its job may have been accepted, and then it is answered.
    if idempotency_key.is_none() && state.queue.known_full() {
        return Err(state.queue.refusal(settings.queue_max_jobs));
    }

    let job_id = JobId::new();
    let message_id = MessageId::new();
    let model = (!params.model.is_empty()).then(|| params.model.clone());
    let request = JobRequest::ConversationTurn { params };
    let turn = OwnedTurn {
        tenant: caller.tenant,
        conversation,
        job_id,
        message_id,
        content: body.content.clone(),
        request,
        model,
        default_model: state.default_model.clone(),
        idempotency_key: idempotency_key.clone(),
        request_hash: request_hash.clone(),
        deadline_secs: settings.job_deadline_secs as f64,
        max_messages: i32::try_from(settings.max_messages_per_conversation).unwrap_or(i32::MAX),
    };
    // Recorded together with the turns of concurrent requests (one transaction for all).
    let enqueued = match state.turns.submit(turn).await {
        Ok(result) => result?,
        Err(Unanswered::Stopped(turn)) => {
            jobs::enqueue_turn(&state.pool, &turn.as_new_turn()).await?
        }
        // The recording task failed mid-batch: whether the turn was recorded is unknown, so
        // this is a server error (a retry with the same Idempotency-Key is safe).
        Err(Unanswered::Lost) => return Err(sqlx::Error::WorkerCrashed.into()),
    };
    let (seq, message_created_at, job_created_at, model) = match enqueued {
        EnqueueOutcome::Enqueued {
            seq,
            message_created_at,
            job_created_at,
            model,
            ..
        } => (seq, message_created_at, job_created_at, model),
        EnqueueOutcome::NotFound => return Err(ApiError::not_found("conversation", conversation)),
        EnqueueOutcome::Full => {
            return Err(ApiError::Conflict {
                code: "conversation_full",
                message: format!(
                    "This conversation holds the maximum of {} messages; clear its history or start a new one.",
                    settings.max_messages_per_conversation
                ),
            });
        }
        EnqueueOutcome::Busy => {
            return Err(ApiError::Conflict {
                code: "conversation_busy",
                message: "A reply is still being generated for this conversation. Wait for its job to finish, then send again.".into(),
            });
        }
        EnqueueOutcome::NoModel => {
            return Err(ApiError::invalid(
                "No model: name one in the request or the conversation, or set CHATQ_MODEL on the server.",
                "model",
            ));
        }
        EnqueueOutcome::DuplicateKey => {
            let key = idempotency_key.as_deref().unwrap_or_default();
            return replay(&state, &caller, key, request_hash.as_deref(), wait).await;
        }
    };

    // Subscribe before publishing, so a job that finishes at once is not missed.
    let waiter = match wait {
        Some(secs) if secs > 0 => JobWaiter::subscribe(&state, job_id)
            .await
            .map(|w| (w, secs)),
        _ => None,
    };
    // Fault testing only (CHATQ_FAULT_EXIT_BEFORE_PUBLISH): crash between recording and publishing.
    chatq_common::queue::fault_exit_before_publish(settings, job_id);
    match publish_job(&state.jetstream, &state.topology, job_id, Lane::Interactive).await {
        Ok(_) => {
            state.published.mark(job_id);
            state.queue.note_room();
        }
        Err(PublishJobError::QueueFull) => {
            state.queue.note_full();
            // Back-pressure: take the turn back so the refused request leaves nothing behind.
            jobs::withdraw(&state.pool, job_id).await?;
            return Err(state.queue.refusal(settings.queue_max_jobs));
        }
        Err(PublishJobError::Unavailable(err)) => {
            // Recorded in Postgres, so it is accepted: the reconciler will publish it.
            tracing::warn!(%job_id, error = %err, "publish failed; the reconciler will queue the job");
        }
    }

    if let Some((waiter, secs)) = waiter
        && waiter.wait_for_end(Duration::from_secs(secs)).await
        && let Some(job) = jobs::get(&state.pool, caller.tenant, job_id).await?
    {
        let message = stored_message(&state, &caller, message_id).await?;
        return Ok(respond(job, message, wait, false));
    }

    let job = JobView {
        id: job_id,
        object: "job",
        status: JobStatus::Queued,
        lane: Lane::Interactive.as_str().to_owned(),
        model,
        conversation_id: Some(conversation),
        created_at: job_created_at.unix_timestamp(),
        started_at: None,
        finished_at: None,
        attempts: 0,
        queued_ms: None,
        ttft_ms: None,
        upstream_ms: None,
        reply: None,
        error: None,
    };
    let message = MessageView {
        id: message_id,
        object: "message",
        conversation_id: conversation,
        seq,
        role: "user".into(),
        content: body.content,
        job_id: Some(job_id),
        created_at: message_created_at.unix_timestamp(),
    };
    Ok(accepted(&job, Some(&message), false))
}

/// Answers a retried request with the job its idempotency key first created.
async fn replay(
    state: &AppState,
    caller: &Caller,
    key: &str,
    request_hash: Option<&[u8]>,
    wait: Option<u64>,
) -> ApiResult<Response> {
    let Some(job) = jobs::find_by_idempotency_key(&state.pool, caller.tenant, key).await? else {
        // The first job was deleted with its conversation: the key names nothing any more.
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "This Idempotency-Key was used for a conversation that has since been deleted; use a new key.".into(),
        });
    };
    if job.request_hash.as_deref() != request_hash {
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "This Idempotency-Key was already used for a different request; use a new key for a new request.".into(),
        });
    }
    let job = match wait {
        Some(secs) if secs > 0 && !job.status().is_terminal() => {
            let mut job = job;
            if let Some(waiter) = JobWaiter::subscribe(state, job.id).await {
                // Re-read after subscribing, in case it finished in between.
                let current = jobs::get(&state.pool, caller.tenant, job.id).await?;
                let finished = current.as_ref().is_some_and(|j| j.status().is_terminal());
                if finished || waiter.wait_for_end(Duration::from_secs(secs)).await {
                    job = jobs::get(&state.pool, caller.tenant, job.id)
                        .await?
                        .unwrap_or(job);
                }
            }
            job
        }
        _ => job,
    };
    let message = match job.user_message_id {
        Some(id) => stored_message(state, caller, id).await?,
        None => None,
    };
    Ok(respond(job, message, wait, true))
}

async fn stored_message(
    state: &AppState,
    caller: &Caller,
    id: MessageId,
) -> ApiResult<Option<MessageView>> {
    Ok(messages::get(&state.pool, caller.tenant, id)
        .await?
        .map(MessageView::from))
}

/// 200 with a finished job when the client waited for it; 202 otherwise.
fn respond(
    job: JobRow,
    message: Option<MessageView>,
    wait: Option<u64>,
    replayed: bool,
) -> Response {
    let finished = job.status().is_terminal();
    let job = JobView::from(job);
    match (finished, wait) {
        (true, Some(secs)) => {
            let mut response = Json(json!({ "job": job, "message": message })).into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("wait={secs}")) {
                response.headers_mut().insert("preference-applied", value);
            }
            mark_replayed(&mut response, replayed);
            response
        }
        _ => accepted(&job, message.as_ref(), replayed),
    }
}

/// 202 with `Location: /v1/jobs/{id}`. The message is null when a replayed request's message was
/// cleared from the history since; the job is still there to poll.
fn accepted(job: &JobView, message: Option<&MessageView>, replayed: bool) -> Response {
    let location = format!("/v1/jobs/{}", job.id);
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({ "job": job, "message": message })),
    )
        .into_response();
    mark_replayed(&mut response, replayed);
    response
}

fn mark_replayed(response: &mut Response, replayed: bool) {
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
}

/// `POST /v1/messages/{id}/feedback`: one rating per reply; giving it again replaces it.
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
        FeedbackOutcome::Saved(row) => Ok((StatusCode::CREATED, Json(row.into()))),
        FeedbackOutcome::NotFound => Err(ApiError::not_found("message", message)),
        FeedbackOutcome::NotAnAssistantMessage => Err(ApiError::invalid(
            "Feedback can only be given on assistant messages (replies).",
            "message_id",
        )),
    }
}
