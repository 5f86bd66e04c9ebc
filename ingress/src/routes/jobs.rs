//! Jobs: poll one, optionally long-polling until it finishes; cancel one.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chatq_common::db::jobs;
use chatq_common::ids::JobId;
use serde::Deserialize;

use crate::auth::Caller;
use crate::cancel::{Cancelled, cancel_job};
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, QueryParams};
use crate::state::AppState;
use crate::views::JobView;
use crate::waiting::JobWait;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Seconds to wait for the job to finish before answering.
    wait: Option<u64>,
}

/// `GET /v1/jobs/{id}[?wait=N]`.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = JobId, Path, description = "The job's id."), GetQuery),
    responses((status = 200, description = "The job.", body = JobView), crate::openapi::ApiErrors))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<JobId>,
    QueryParams(query): QueryParams<GetQuery>,
) -> ApiResult<Json<JobView>> {
    let wait = query.wait.unwrap_or(0).min(state.limits.max_wait_secs);
    let job = jobs::get(&state.pool, caller.tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))?;
    if wait == 0 || job.status().is_terminal() {
        return Ok(Json(job.into()));
    }
    // The wait reads the job again once it follows it, so an end in between is not missed.
    let ended = JobWait::begin(&state, id)
        .await
        .until_end(Duration::from_secs(wait))
        .await;
    Ok(Json(ended.unwrap_or_else(|| job.into())))
}

/// `POST /v1/jobs/{id}/cancel`: 200 with the cancelled job; 202 with the job still running when
/// its worker has not stopped it within a few seconds (the cancel is recorded and will be
/// applied); 409 for a job that had already finished.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = JobId, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The cancelled job.", body = JobView),
        (status = 202, description = "Cancel recorded; the job is still stopping.", body = JobView),
        crate::openapi::ApiErrors))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<JobId>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    match cancel_job(&state, &caller, id).await? {
        Cancelled::Now(job) => Ok((StatusCode::OK, Json(job))),
        Cancelled::Pending(job) => Ok((StatusCode::ACCEPTED, Json(job))),
    }
}
