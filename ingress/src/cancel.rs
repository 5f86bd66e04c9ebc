//! Cancelling a job, for `POST /v1/jobs/{id}/cancel`.

use std::time::Duration;

use chatq_common::db::jobs::{self, CancelOutcome};
use chatq_common::events::{self, JobEvent};
use chatq_common::ids::JobId;
use chatq_common::job::JobStatus;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::JobView;
use crate::waiting::JobWait;

/// How long a cancel of a running job waits for its worker to stop it before answering 202.
const CANCEL_WAIT: Duration = Duration::from_secs(3);

/// What a cancel did.
#[derive(Debug)]
pub enum Cancelled {
    /// The job is `cancelled`.
    Now(JobView),
    /// The job is still running: the cancel is recorded, and applied by its worker or, if the
    /// worker died, by the next delivery.
    Pending(JobView),
}

/// Cancels a job. A queued job ends `cancelled` at once. A running job is stopped at its worker,
/// which drops the provider call; this waits a few seconds for that.
///
/// # Errors
/// 404 for no such job of the caller's tenant, 409 for a job that had already finished.
pub async fn cancel_job(state: &AppState, caller: &Caller, id: JobId) -> ApiResult<Cancelled> {
    match jobs::request_cancel(&state.pool, caller.tenant, id).await? {
        CancelOutcome::NotFound => Err(ApiError::not_found("job", id)),
        CancelOutcome::Finished(status) => Err(already_finished(status)),
        CancelOutcome::Cancelled(job) => {
            let event = JobEvent::ended_outside_attempt(*job);
            events::publish(&state.nats, &state.topology, id, &event).await;
            let job = event.body.ended_job().cloned().ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("a cancelled job without its view"))
            })?;
            Ok(Cancelled::Now(job))
        }
        CancelOutcome::Requested => {
            // Follow before telling the worker, so its terminal event cannot be missed.
            let waiting = JobWait::begin(state, id).await;
            let notice = state
                .nats
                .publish(state.topology.cancel_subject(id), bytes::Bytes::new())
                .await;
            if let Err(err) = notice {
                // The worker still finds the cancel in Postgres at its next lease renewal.
                tracing::warn!(job_id = %id, error = %err, "could not tell the worker to cancel a job");
            }
            match waiting.until_end(CANCEL_WAIT).await {
                Some(job) if job.status == JobStatus::Cancelled => Ok(Cancelled::Now(job)),
                // The worker committed its result before the cancel reached it.
                Some(job) => Err(already_finished(job.status)),
                None => {
                    let job = jobs::get(&state.pool, caller.tenant, id)
                        .await?
                        .ok_or_else(|| ApiError::not_found("job", id))?;
                    Ok(Cancelled::Pending(job.into()))
                }
            }
        }
    }
}

fn already_finished(status: JobStatus) -> ApiError {
    ApiError::Conflict {
        code: "job_finished",
        message: format!("This job already finished ({status}); there is nothing to cancel."),
    }
}
