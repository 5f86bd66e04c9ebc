//! Submitting work: the path every request that creates a job takes, under the handlers.
//!
//! - [`turn`]: record and queue a conversation turn (`POST /v1/conversations/{id}/messages`).
//! - [`completion`]: record and queue a chat completion, then wait for it or stream it;
//!   [`abandoned`]: cancel it if its client goes away before it starts.
//! - [`idempotency`]: `Idempotency-Key`: what a key stands for, and answering a retry with the
//!   job the key first created.
//! - [`retry`]: a dead letter sent back to the queue by an operator.
//!
//! Both kinds of job go through the same two steps, defined here once: [`record`] (with the jobs
//! of concurrent requests, in one transaction) and [`queue`] (publish to JetStream, or take the
//! job back when the queue is full).
//!
//! A job is recorded and published with the trace of the request that created it (see
//! `crate::trace_context`). Each step runs in a DEBUG span that names the job: `send_turn` or
//! `run_completion`, then `publish`, whose "job queued" line ties the request's trace id to the
//! job id.

pub mod abandoned;
pub mod completion;
pub mod idempotency;
pub mod retry;
pub mod turn;

use chatq_common::batch::Unanswered;
use chatq_common::db::jobs::{self, NewJob, Recorded, RecordedJob};
use chatq_common::ids::{ConversationId, JobId};
use chatq_common::job::Lane;
use chatq_common::queue::{Placement, PublishJobError, publish_placed};
use chatq_common::trace::TraceContext;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Refuses before anything is written while the queue is known to be full. A request that
/// carries an idempotency key goes on: it may be the retry of a job accepted earlier, which is
/// then answered.
pub(crate) fn shed_if_full(state: &AppState, keyed: bool) -> ApiResult<()> {
    if !keyed && state.queue.known_full() {
        return Err(state.queue.refusal());
    }
    Ok(())
}

/// Records a job together with those of concurrent requests (one transaction for all).
pub(crate) async fn record(state: &AppState, job: NewJob) -> ApiResult<Recorded> {
    let outcome = match state.jobs.submit(job).await {
        Ok(outcome) => outcome,
        // The batcher has stopped (the server is shutting down): record it alone.
        Err(Unanswered::Stopped(job)) => jobs::record_gathered(&state.pool, vec![job])
            .await
            .pop()
            .unwrap_or(Err(sqlx::Error::WorkerCrashed)),
        // The recording task failed mid-batch: whether the job was recorded is unknown, so this
        // is a server error (a retry with the same Idempotency-Key is safe).
        Err(Unanswered::Lost) => Err(sqlx::Error::WorkerCrashed),
    };
    Ok(outcome?)
}

/// Where a job recorded as `recorded` is queued: behind other tenants' jobs when its tenant had
/// its fair share (`fair_share_queued_jobs`) queued already.
pub(crate) fn placement(state: &AppState, recorded: &RecordedJob) -> Placement {
    Placement::for_queued(recorded.queued_ahead, state.limits.fair_share_queued_jobs)
}

/// Queues a recorded interactive job (a turn names its conversation). When the queue refuses it (full), the job is taken back, so the refused
/// request leaves nothing behind, and the client gets 503 with `Retry-After`. When NATS cannot be
/// reached the job stays accepted: it is recorded, and the reconciler publishes it.
#[tracing::instrument(level = "debug", name = "publish", skip_all, fields(%job_id))]
pub(crate) async fn queue(
    state: &AppState,
    job_id: JobId,
    conversation: Option<ConversationId>,
    placement: Placement,
    trace: &TraceContext,
) -> ApiResult<()> {
    let lane = Lane::Interactive;
    let published = publish_placed(
        &state.jetstream,
        &state.topology,
        job_id,
        lane,
        conversation,
        placement,
        Some(trace),
    );
    match published.await {
        Ok(_) => {
            state.published.mark(job_id);
            state.queue.note_room();
            tracing::debug!("job queued");
            Ok(())
        }
        Err(PublishJobError::QueueFull) => {
            state.queue.note_full();
            jobs::withdraw(&state.pool, job_id).await?;
            Err(state.queue.refusal())
        }
        Err(PublishJobError::Unavailable(err)) => {
            tracing::warn!(%job_id, error = %err, "publish failed; the reconciler will queue the job");
            Ok(())
        }
    }
}

/// The error for a job the write path refused to record.
pub(crate) fn refused(
    outcome: &Recorded,
    state: &AppState,
    conversation: impl std::fmt::Display,
) -> ApiError {
    match outcome {
        Recorded::NotFound => ApiError::not_found("conversation", conversation),
        Recorded::Full => ApiError::Conflict {
            code: "conversation_full",
            message: format!(
                "This conversation holds the maximum of {} messages; clear its history or start a new one.",
                state.limits.max_messages_per_conversation
            ),
        },
        Recorded::Busy => ApiError::Conflict {
            code: "conversation_busy",
            message: "A reply is still being generated for this conversation. Wait for its job to finish, then send again.".into(),
        },
        Recorded::NoModel => ApiError::invalid(
            "No model: name one in the request or the conversation, or set CHATQ_MODEL on the server.",
            "model",
        ),
        Recorded::OverQuota(over) => ApiError::over_quota(*over),
        // Recorded and replayed jobs are answered by the caller; reaching here is a bug.
        Recorded::Enqueued(_) | Recorded::DuplicateKey => {
            ApiError::internal(anyhow::anyhow!("a recorded job was treated as refused"))
        }
    }
}
