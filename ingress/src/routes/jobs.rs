//! Jobs: poll one, optionally long-polling until it finishes; cancel one.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chatq_common::db::jobs::{self, CANCELLED_MESSAGE, CancelOutcome};
use chatq_common::events::{EventIds, EventKind, JobEvent};
use chatq_common::ids::JobId;
use chatq_common::job::JobStatus;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, QueryParams};
use crate::state::AppState;
use crate::views::JobView;
use crate::waiter::JobWaiter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Seconds to wait for the job to finish before answering.
    wait: Option<u64>,
}

/// `GET /v1/jobs/{id}[?wait=N]`.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<JobId>,
    QueryParams(query): QueryParams<GetQuery>,
) -> ApiResult<Json<JobView>> {
    let wait = query.wait.unwrap_or(0).min(state.settings.max_wait_secs);
    // Subscribe first, then read: a job finishing in between is then seen by one or the other.
    let waiter = if wait > 0 {
        JobWaiter::subscribe(&state, id).await
    } else {
        None
    };
    let job = jobs::get(&state.pool, caller.tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))?;
    if job.status().is_terminal() {
        return Ok(Json(job.into()));
    }
    let Some(waiter) = waiter else {
        return Ok(Json(job.into()));
    };
    if waiter.wait_for_end(Duration::from_secs(wait)).await
        && let Some(finished) = jobs::get(&state.pool, caller.tenant, id).await?
    {
        return Ok(Json(finished.into()));
    }
    Ok(Json(job.into()))
}

/// How long a cancel of a running job waits for its worker to stop it before answering 202.
const CANCEL_WAIT: Duration = Duration::from_secs(3);

/// `POST /v1/jobs/{id}/cancel`. A queued job ends `cancelled` at once: 200 with the job. A running
/// job is stopped at its worker, which drops the provider call: 200 with the cancelled job once it
/// has, or 202 with the job still running if that takes longer than a few seconds (the cancel is
/// recorded, and applied by the worker or, if the worker died, by the next delivery). 409 for a job
/// that had already finished.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<JobId>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let running = match jobs::request_cancel(&state.pool, caller.tenant, id).await? {
        CancelOutcome::NotFound => return Err(ApiError::not_found("job", id)),
        CancelOutcome::Finished(status) => return Err(already_finished(status)),
        CancelOutcome::Cancelled { event_attempts } => {
            publish_cancelled(&state, id, event_attempts).await;
            false
        }
        CancelOutcome::Requested => true,
    };
    if running {
        // Subscribe before telling the worker, so its terminal event cannot be missed.
        let waiter = JobWaiter::subscribe(&state, id).await;
        let notice = state
            .nats
            .publish(state.topology.cancel_subject(id), bytes::Bytes::new())
            .await;
        if let Err(err) = notice {
            // The worker still finds the cancel in Postgres at its next lease renewal.
            tracing::warn!(job_id = %id, error = %err, "could not tell the worker to cancel a job");
        }
        if let Some(waiter) = waiter {
            waiter.wait_for_end(CANCEL_WAIT).await;
        }
    }
    let job = jobs::get(&state.pool, caller.tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))?;
    match job.status() {
        JobStatus::Cancelled => Ok((StatusCode::OK, Json(job.into()))),
        JobStatus::Queued | JobStatus::Running => Ok((StatusCode::ACCEPTED, Json(job.into()))),
        // The worker committed its result before the cancel reached it.
        other => Err(already_finished(other)),
    }
}

fn already_finished(status: JobStatus) -> ApiError {
    ApiError::Conflict {
        code: "job_finished",
        message: format!("This job already finished ({status}); there is nothing to cancel."),
    }
}

/// The `job.cancelled` event of a job cancelled before any worker held it, numbered after every
/// event its attempts could have emitted. Events are a courtesy to live subscribers; Postgres has
/// the record, so a failed publish is only logged.
async fn publish_cancelled(state: &AppState, id: JobId, attempts: u32) {
    let event = JobEvent {
        id: EventIds::after_attempts(attempts),
        event: EventKind::JobCancelled,
        data: json!({
            "job_id": id,
            "status": JobStatus::Cancelled,
            "error": { "type": "cancelled", "message": CANCELLED_MESSAGE },
        }),
    };
    let Ok(payload) = event.to_bytes() else {
        return;
    };
    if let Err(err) = state
        .nats
        .publish(state.topology.events_subject(id), payload)
        .await
    {
        tracing::warn!(job_id = %id, error = %err, "could not publish a job event");
    }
}
