//! Recording and queueing a chat completion, then following it: waiting for the whole reply, or
//! streaming its events.

use std::time::Duration;

use chatq_common::db::jobs::{self, NewJob, Recorded};
use chatq_common::events::{EventBody, JobView};
use chatq_common::ids::JobId;
use chatq_common::job::{JobRequest, Lane};
use chatq_common::queue::Placement;
use chatq_common::reply_cache::CacheTier;
use chatq_common::trace::TraceContext;

use super::abandoned::AbandonGuard;
use super::idempotency::{self, IdempotencyKey};
use crate::auth::Caller;
use crate::chat_api::{ChatCompletion, ChatCompletionRequest, ChunkWriter, completion_id};
use crate::error::{ApiError, ApiResult};
use crate::hub::ResumingCursor;
use crate::state::AppState;
use crate::stream_slots::StreamSlot;
use crate::waiting::JobWait;

/// A completion under way.
pub struct StartedCompletion {
    pub job_id: JobId,
    /// A retry answered with the job its `Idempotency-Key` first created.
    pub replayed: bool,
    /// The tier of the reply cache the reply comes from (`x-chatq-cache: hit` and
    /// `x-chatq-cache-tier`). For a stream it is known when the job starts: a reply already
    /// cached then is a hit.
    pub cache: Option<CacheTier>,
    pub answer: CompletionAnswer,
}

/// How the client is answered.
pub enum CompletionAnswer {
    /// `stream: false`: the whole completion.
    Whole(ChatCompletion),
    /// `stream: true`: the job's events, to be written as chunks, with the stream slot they hold.
    Stream {
        cursor: ResumingCursor,
        writer: ChunkWriter,
        slot: StreamSlot,
        /// Cancels the job if the stream is dropped before it started.
        abandon: AbandonGuard,
    },
}

/// Records the completion's job and queues it, then waits for it (`stream: false`) or follows
/// its events (`stream: true`).
///
/// # Errors
/// Invalid input (400), an unknown model (404), a reused idempotency key (409), a full queue or
/// no message bus for a stream (503), a reply that failed or did not finish in time.
#[tracing::instrument(level = "debug", skip_all, fields(job_id))]
pub async fn run_completion(
    state: &AppState,
    caller: &Caller,
    body: ChatCompletionRequest,
    sent: serde_json::Map<String, serde_json::Value>,
    key: Option<IdempotencyKey>,
    trace: TraceContext,
) -> ApiResult<StartedCompletion> {
    let idempotency = key.map(|key| key.bind("/v1/chat/completions", &body));
    let request = body.validate(sent, &state.limits, state.unknown_parameters)?;
    let model = request.params.model.clone();
    crate::routes::models::ensure_offered(state, &model)?;
    super::shed_if_full(state, idempotency.is_some())?;
    let cacheable = state.cache_enabled && request.params.cacheable();
    // A stream's slot is taken before anything is written, so a refused stream leaves nothing.
    let slot = if request.stream {
        Some(state.event_streams.open(caller.tenant).await?)
    } else {
        None
    };
    let job = NewJob {
        id: JobId::new(),
        tenant: caller.tenant,
        lane: Lane::Interactive,
        model: Some(model.clone()),
        request: JobRequest::ChatCompletion {
            params: request.params,
            body: Some(request.body),
            messages: Vec::new(),
        },
        default_model: None,
        idempotency: idempotency.clone(),
        deadline_secs: state.limits.job_deadline_secs as f64,
        max_queued: state.limits.tenant_max_queued_jobs,
        turn: None,
        trace: Some(trace),
    };
    let job_id = job.id;
    let (job_id, created, replayed, placement) = match super::record(state, job).await? {
        Recorded::Enqueued(recorded) => (
            job_id,
            recorded.created_at.unix_timestamp(),
            false,
            super::placement(state, &recorded),
        ),
        Recorded::DuplicateKey => {
            let Some(idempotency) = idempotency else {
                return Err(super::refused(&Recorded::DuplicateKey, state, job_id));
            };
            let first = idempotency::first_job(state, caller.tenant, &idempotency).await?;
            (
                first.id,
                first.created_at.unix_timestamp(),
                true,
                Placement::Front,
            )
        }
        refused => return Err(super::refused(&refused, state, job_id)),
    };
    tracing::Span::current().record("job_id", tracing::field::display(job_id));
    let writer = ChunkWriter {
        id: completion_id(job_id),
        created,
        model,
        include_usage: request.include_usage,
        choices: request.choices,
    };
    let mut abandon = AbandonGuard::new(state, caller.tenant, job_id, replayed);
    let (answer, cache) = if let Some(slot) = slot {
        let queueing = Queueing {
            replayed,
            placement,
            trace: &trace,
        };
        let answer = stream(state, job_id, writer, slot, queueing, abandon).await?;
        let cache = if cacheable {
            started_from_cache(state, job_id).await
        } else {
            None
        };
        (answer, cache)
    } else {
        // Follow before publishing, so not even an instant reply can be missed.
        let waiting = if replayed {
            JobWait::begin(state, job_id).await
        } else {
            JobWait::begin_recorded(state, recorded_view(job_id, &writer)).await
        };
        if !replayed {
            super::queue(state, job_id, None, placement, &trace).await?;
        }
        let deadline = Duration::from_secs(state.limits.job_deadline_secs);
        let ended = waiting.until_end(deadline).await;
        abandon.disarm();
        let job = match ended {
            Some(job) => job,
            None => jobs::get(&state.pool, caller.tenant, job_id)
                .await?
                .ok_or_else(|| ApiError::not_found("job", job_id))?
                .into(),
        };
        let cache = job.reply.as_ref().and_then(|reply| reply.cache);
        (
            CompletionAnswer::Whole(ChatCompletion::from_job(job, writer)?),
            cache,
        )
    };
    Ok(StartedCompletion {
        job_id,
        replayed,
        cache,
        answer,
    })
}

/// The completion's job as this request has just recorded it.
fn recorded_view(job_id: JobId, writer: &ChunkWriter) -> JobView {
    JobView::queued(
        job_id,
        Lane::Interactive,
        writer.model.clone(),
        None,
        writer.created,
    )
}

/// Waits for the job to start and says which tier of the reply cache its reply comes from, if
/// any (the `job.started` event says so), so a stream's headers can tell. The stream itself
/// follows its own cursor, which this does not touch.
async fn started_from_cache(state: &AppState, job_id: JobId) -> Option<CacheTier> {
    let Ok(cursor) = state.hubs.follow(job_id).await else {
        return None;
    };
    let mut cursor = cursor.resume(None);
    while let Some(event) = cursor.next().await {
        match &event.body {
            EventBody::Queued(_) => {}
            EventBody::Started(started) => {
                // An event from a worker that names no tier can only mean the exact one.
                return started
                    .cached
                    .then(|| started.cache.unwrap_or(CacheTier::Exact));
            }
            EventBody::Succeeded(job) => return job.reply.as_ref().and_then(|reply| reply.cache),
            _ => return None,
        }
    }
    None
}

/// How a streamed completion's job is queued: not at all for a replay (it was queued by the
/// request that created it).
struct Queueing<'a> {
    replayed: bool,
    placement: Placement,
    trace: &'a TraceContext,
}

/// Follows the job's events (before publishing it, so not even the first token can be missed).
async fn stream(
    state: &AppState,
    job_id: JobId,
    writer: ChunkWriter,
    slot: StreamSlot,
    queueing: Queueing<'_>,
    abandon: AbandonGuard,
) -> ApiResult<CompletionAnswer> {
    let Queueing {
        replayed,
        placement,
        trace,
    } = queueing;
    let followed = if replayed {
        state.hubs.follow(job_id).await
    } else {
        state
            .hubs
            .follow_recorded(recorded_view(job_id, &writer))
            .await
    };
    let cursor = match followed {
        Ok(cursor) => cursor.resume(None),
        Err(err) => {
            tracing::warn!(%job_id, error = %err, "cannot follow a job's events");
            if !replayed {
                jobs::withdraw(&state.pool, job_id).await?;
            }
            return Err(ApiError::Overloaded {
                message: "Streaming is unavailable right now (the message bus cannot be reached)."
                    .into(),
                retry_after: Duration::from_secs(2),
            });
        }
    };
    if !replayed {
        super::queue(state, job_id, None, placement, trace).await?;
    }
    Ok(CompletionAnswer::Stream {
        cursor,
        writer,
        slot,
        abandon,
    })
}
