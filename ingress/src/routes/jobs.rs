//! Jobs: poll one, optionally long-polling until it finishes.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use chatq_common::db::jobs;
use chatq_common::ids::JobId;
use serde::Deserialize;

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
