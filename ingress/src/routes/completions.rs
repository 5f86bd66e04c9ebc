//! `POST /v1/chat/completions`: the OpenAI request and response shapes, through the same queue
//! (interactive lane) as conversation turns. The job id is in the `x-chatq-job-id` header, so a
//! client can also follow the job with `GET /v1/jobs/{id}` or its events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use chatq_common::db::completions::{self, NewCompletion};
use chatq_common::db::jobs::{self, JobRow};
use chatq_common::events::EventKind;
use chatq_common::ids::JobId;
use chatq_common::job::{JobRequest, JobStatus, Lane};
use chatq_common::queue::{PublishJobError, publish_job};
use futures::Stream;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::hub::ResumingCursor;
use crate::openai::{
    ChatCompletion, ChatCompletionRequest, ChunkWriter, completion_id, stream_error,
};
use crate::routes::events::{open_stream_slot, sse_response};
use crate::state::AppState;
use crate::waiter::JobWaiter;

/// How often a non-streaming request checks Postgres when NATS cannot tell it the job finished.
const FALLBACK_POLL: Duration = Duration::from_millis(500);

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<ChatCompletionRequest>,
) -> ApiResult<Response> {
    let request = body.validate(&state.settings)?;
    let model = request.params.model.clone();
    if !state.models.is_empty() && !crate::routes::models::configured(&state).contains(&model) {
        return Err(ApiError::NotFound(format!(
            "The model '{model}' does not exist or you do not have access to it. GET /v1/models lists the models."
        )));
    }
    if state.queue.known_full() {
        return Err(state.queue.refusal(state.settings.queue_max_jobs));
    }
    let job_id = JobId::new();
    let job_request = JobRequest::ChatCompletion {
        params: request.params,
        messages: request.messages,
    };
    let created = completions::enqueue(
        &state.pool,
        &NewCompletion {
            tenant: caller.tenant,
            job_id,
            lane: Lane::Interactive,
            request: &job_request,
            model: &model,
            deadline_secs: state.settings.job_deadline_secs as f64,
        },
    )
    .await?
    .unix_timestamp();
    let writer = ChunkWriter {
        id: completion_id(job_id),
        created,
        model,
        include_usage: request.include_usage,
    };
    let mut response = if request.stream {
        streamed(&state, job_id, writer).await?
    } else {
        whole(&state, &caller, job_id, writer).await?
    };
    if let Ok(value) = HeaderValue::from_str(&job_id.to_string()) {
        response.headers_mut().insert("x-chatq-job-id", value);
    }
    Ok(response)
}

/// Publishes the job, taking it back if the queue refuses it.
async fn queue(state: &AppState, job_id: JobId) -> ApiResult<()> {
    match publish_job(&state.jetstream, &state.topology, job_id, Lane::Interactive).await {
        Ok(_) => {
            state.published.mark(job_id);
            state.queue.note_room();
            Ok(())
        }
        Err(PublishJobError::QueueFull) => {
            state.queue.note_full();
            jobs::withdraw(&state.pool, job_id).await?;
            Err(state.queue.refusal(state.settings.queue_max_jobs))
        }
        Err(PublishJobError::Unavailable(err)) => {
            tracing::warn!(%job_id, error = %err, "publish failed; the reconciler will queue the job");
            Ok(())
        }
    }
}

/// `stream: false`: wait for the job, then answer with the whole completion.
async fn whole(
    state: &AppState,
    caller: &Caller,
    job_id: JobId,
    writer: ChunkWriter,
) -> ApiResult<Response> {
    let started = tokio::time::Instant::now();
    let deadline = Duration::from_secs(state.settings.job_deadline_secs);
    let waiter = JobWaiter::subscribe(state, job_id).await;
    queue(state, job_id).await?;
    if let Some(waiter) = waiter {
        waiter.wait_for_end(deadline).await;
    }
    // Read the outcome; without NATS to say when the job ends, poll until its deadline.
    let job = loop {
        let job = jobs::get(&state.pool, caller.tenant, job_id)
            .await?
            .ok_or_else(|| ApiError::not_found("job", job_id))?;
        if job.status().is_terminal() || started.elapsed() >= deadline {
            break job;
        }
        tokio::time::sleep(FALLBACK_POLL).await;
    };
    completion_response(job, writer)
}

fn completion_response(job: JobRow, writer: ChunkWriter) -> ApiResult<Response> {
    match job.status() {
        JobStatus::Succeeded => {
            let usage = job
                .usage
                .clone()
                .and_then(|u| serde_json::from_value(u).ok());
            let completion = ChatCompletion::new(
                writer.id,
                writer.created,
                job.reply_model.clone().unwrap_or(writer.model),
                job.reply_content.unwrap_or_default(),
                job.finish_reason.unwrap_or_else(|| "stop".into()),
                usage,
            );
            Ok(Json(completion).into_response())
        }
        status => Err(job_error(
            status,
            job.error_type.as_deref(),
            job.error_message.as_deref(),
        )),
    }
}

/// The HTTP error for a job that ended without a reply.
fn job_error(status: JobStatus, error_type: Option<&str>, message: Option<&str>) -> ApiError {
    let message = message
        .unwrap_or("the job ended without a reply")
        .to_owned();
    match (status, error_type) {
        (JobStatus::Failed, Some("provider_rejected")) => ApiError::InvalidRequest {
            message: format!("The model provider rejected the request: {message}"),
            param: None,
            code: Some("provider_rejected"),
        },
        (JobStatus::Cancelled, _) => ApiError::Conflict {
            code: "job_cancelled",
            message: "The request was cancelled before it finished.".into(),
        },
        (JobStatus::Queued | JobStatus::Running, _) => ApiError::Overloaded {
            message: "The reply did not finish in time. Try again later.".into(),
            retry_after: Duration::from_secs(5),
        },
        _ => ApiError::Overloaded {
            message: format!("The model provider could not answer: {message}"),
            retry_after: Duration::from_secs(1),
        },
    }
}

/// `stream: true`: follow the job's events and answer with `chat.completion.chunk` lines.
async fn streamed(state: &AppState, job_id: JobId, writer: ChunkWriter) -> ApiResult<Response> {
    let slot = open_stream_slot(state)?;
    // Follow before publishing, so not even the first token can be missed.
    let cursor = match state.hubs.follow(job_id).await {
        Ok(cursor) => cursor.resume(None),
        Err(err) => {
            tracing::warn!(%job_id, error = %err, "cannot follow a job's events");
            jobs::withdraw(&state.pool, job_id).await?;
            return Err(ApiError::Overloaded {
                message: "Streaming is unavailable right now (the message bus cannot be reached)."
                    .into(),
                retry_after: Duration::from_secs(2),
            });
        }
    };
    queue(state, job_id).await?;
    let chunks = chunk_stream(cursor, writer, slot, state.streams_stop.clone());
    Ok(sse_response(chunks, state))
}

/// Where a streamed completion is.
struct ChunkState {
    cursor: ResumingCursor,
    writer: ChunkWriter,
    /// Sent first, before any event arrives.
    role_sent: bool,
    content_sent: bool,
    /// Chunks still to send for the event just read.
    pending: std::collections::VecDeque<String>,
    finished: bool,
    _slot: tokio::sync::OwnedSemaphorePermit,
    stop: tokio_util::sync::CancellationToken,
}

fn chunk_stream(
    cursor: ResumingCursor,
    writer: ChunkWriter,
    slot: tokio::sync::OwnedSemaphorePermit,
    stop: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = ChunkState {
        cursor,
        writer,
        role_sent: false,
        content_sent: false,
        pending: Default::default(),
        finished: false,
        _slot: slot,
        stop,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(data) = state.pending.pop_front() {
                return Some((Ok(Event::default().data(data)), state));
            }
            if state.finished {
                return None;
            }
            if !state.role_sent {
                state.role_sent = true;
                state.pending.push_back(state.writer.role());
                continue;
            }
            let event = tokio::select! {
                event = state.cursor.next() => event,
                () = state.stop.cancelled() => None,
            };
            let Some(event) = event else {
                // The job's events ended without a terminal one (the server is stopping).
                state.finished = true;
                state.pending.push_back(stream_error(
                    "api_error",
                    "stream_interrupted",
                    "The stream was interrupted before the reply finished; retry the request.",
                ));
                continue;
            };
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            match event.kind {
                EventKind::JobQueued => {}
                EventKind::JobStarted => {
                    let attempt = data["attempt"].as_u64().unwrap_or(1);
                    if attempt > 1 && state.content_sent {
                        state.finished = true;
                        state.pending.push_back(stream_error(
                            "api_error",
                            "reply_restarted",
                            "The model provider failed mid-reply and the reply restarted; retry the request.",
                        ));
                    }
                }
                EventKind::MessageDelta => {
                    if let Some(text) = data["delta"].as_str() {
                        state.content_sent = true;
                        state.pending.push_back(state.writer.content(text));
                    }
                }
                EventKind::JobSucceeded => {
                    state.finished = true;
                    let reply = &data["reply"];
                    let finish_reason = reply["finish_reason"].as_str().unwrap_or("stop");
                    state.pending.push_back(state.writer.finish(finish_reason));
                    if state.writer.include_usage
                        && let Ok(usage) = serde_json::from_value(reply["usage"].clone())
                    {
                        state.pending.push_back(state.writer.usage(usage));
                    }
                    state.pending.push_back("[DONE]".into());
                }
                EventKind::JobFailed | EventKind::JobCancelled => {
                    state.finished = true;
                    let message = data["error"]["message"]
                        .as_str()
                        .unwrap_or("the request failed");
                    let code = data["error"]["type"].as_str().unwrap_or("job_failed");
                    state
                        .pending
                        .push_back(stream_error("api_error", code, message));
                }
            }
        }
    })
}
