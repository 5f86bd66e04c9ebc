//! Sending a dead letter back to the queue (`POST /v1/admin/dead-letters/{id}/retry`): its
//! attempts start over under a fresh deadline, and a new copy is published (if NATS refuses it,
//! the reconciler publishes it).

use chatq_common::db::jobs;
use chatq_common::db::jobs::dead_letters::{self, RetryOutcome};
use chatq_common::ids::{JobId, TenantId};
use chatq_common::job::Lane;
use chatq_common::queue::{PublishJobError, publish_copy};
use chatq_common::trace::TraceContext;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::JobView;

/// Requeues a failed job of `tenant` (any tenant's for `None`: an operator) and publishes its
/// new copy. Returns the job as the retry left it.
///
/// # Errors
/// 404 for no such job; 409 for a job that is not failed, or whose conversation has another
/// reply in progress; 429 for an interactive job whose tenant is at its queued-jobs quota;
/// database errors.
pub async fn requeue_dead_letter(
    state: &AppState,
    tenant: Option<TenantId>,
    id: JobId,
) -> ApiResult<JobView> {
    let deadline_secs = state.limits.job_deadline_secs as f64;
    let max_queued = state.limits.tenant_max_queued_jobs;
    let retried = dead_letters::retry(&state.pool, tenant, id, deadline_secs, max_queued).await?;
    let (lane, publication, traceparent) = match retried {
        RetryOutcome::Requeued {
            lane,
            publication,
            traceparent,
        } => (lane, publication, traceparent),
        RetryOutcome::NotFound => return Err(ApiError::not_found("job", id)),
        RetryOutcome::OverQuota(over) => return Err(ApiError::over_quota(over)),
        RetryOutcome::NotFailed(status) => {
            return Err(ApiError::Conflict {
                code: "job_not_failed",
                message: format!(
                    "This job is {status}, not failed; only failed jobs (dead letters) can be retried."
                ),
            });
        }
        RetryOutcome::ConversationBusy => {
            return Err(ApiError::Conflict {
                code: "conversation_busy",
                message: "Another reply is being generated in this job's conversation; retry once it has finished.".into(),
            });
        }
    };
    // Read before publishing: the answer shows the job back in the queue, as the retry left it.
    let job = match tenant {
        Some(tenant) => jobs::get(&state.pool, tenant, id).await?,
        None => jobs::get_any(&state.pool, id).await?,
    };
    let job = job.ok_or_else(|| ApiError::not_found("job", id))?;
    let lane: Lane = lane.parse().unwrap_or(Lane::Interactive);
    // The retry belongs to the trace of the request that created the job.
    let trace = traceparent.as_deref().and_then(TraceContext::parse);
    let published = publish_copy(
        &state.jetstream,
        &state.topology,
        id,
        lane,
        publication,
        trace.as_ref(),
    );
    match published.await {
        Ok(_) => jobs::mark_published(&state.pool, &[id.as_uuid()]).await?,
        Err(PublishJobError::QueueFull) => {
            tracing::warn!(job_id = %id, "queue full; the reconciler will queue the retried job");
        }
        Err(PublishJobError::Unavailable(err)) => {
            tracing::warn!(job_id = %id, error = %err, "publish failed; the reconciler will queue the retried job");
        }
    }
    Ok(job.into())
}
