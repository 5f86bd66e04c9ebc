//! Dead letters: an admin key sees and retries its own tenant's; an operator key every tenant's.
//! Another tenant's dead letter does not exist for an admin key (404).
//!
//! A dead letter is a job that ended `failed`: it used up its attempts, or hit an error that can
//! never succeed. Postgres has the record these endpoints read; the dead-letter stream in
//! JetStream keeps a copy of each for inspection with NATS tools.

use axum::Json;
use axum::extract::State;
use chatq_common::db::jobs::dead_letters::{self, DeadLetterRow};
use chatq_common::ids::{ConversationId, JobId, TenantId};
use serde::{Deserialize, Serialize};

use super::conversations::after_id;
use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, QueryParams};
use crate::state::AppState;
use crate::submit::retry::requeue_dead_letter;
use crate::views::{JobErrorView, JobView, ListView};

/// Default and largest page sizes.
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    /// A job id from the previous page: the list goes on after it.
    after: Option<String>,
}

/// One dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    pub object: &'static str,
    pub job_id: JobId,
    pub tenant_id: TenantId,
    pub conversation_id: Option<ConversationId>,
    pub lane: String,
    pub model: String,
    pub attempts: i32,
    pub error: JobErrorView,
    pub created_at: i64,
    pub failed_at: i64,
}

impl From<DeadLetterRow> for DeadLetterView {
    fn from(row: DeadLetterRow) -> Self {
        Self {
            object: "dead_letter",
            job_id: row.id,
            tenant_id: row.tenant_id,
            conversation_id: row.conversation_id,
            lane: row.lane,
            model: row.model,
            attempts: row.attempts,
            error: JobErrorView {
                kind: row.error_type.unwrap_or_else(|| "failed".into()),
                message: row.error_message.unwrap_or_default(),
            },
            created_at: row.created_at.unix_timestamp(),
            failed_at: row.failed_at.unix_timestamp(),
        }
    }
}

/// `GET /v1/admin/dead-letters?limit&after`: failed jobs, most recent failure first.
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin", params(ListQuery),
    responses((status = 200, description = "Failed jobs, most recent failure first (the key's tenant; every tenant for an operator key).", body = ListView<DeadLetterView>), crate::openapi::ApiErrors))]
pub async fn dead_letters(
    State(state): State<AppState>,
    admin: Admin,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListView<DeadLetterView>>> {
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => limit,
        Some(limit) => {
            return Err(ApiError::invalid_with_code(
                format!("Invalid 'limit': {limit} is not between 1 and {MAX_PAGE}."),
                "limit",
                "invalid_value",
            ));
        }
    };
    let after = after_id::<JobId>(query.after)?;
    let mut rows = dead_letters::list(&state.pool, admin.tenant_scope(), limit + 1, after).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let views = rows.into_iter().map(DeadLetterView::from).collect();
    Ok(Json(ListView::new(
        views,
        has_more,
        |dead: &DeadLetterView| dead.job_id.to_string(),
    )))
}

/// `POST /v1/admin/dead-letters/{job_id}/retry`: sends a failed job back to the queue with its
/// attempts reset and a fresh deadline, and publishes it (if NATS refuses, the reconciler will).
/// 200 with the job; 409 if the job is not failed, or its conversation has another reply in
/// progress.
#[utoipa::path(post, path = "/v1/admin/dead-letters/{job_id}/retry", tag = "admin",
    params(("job_id" = JobId, Path, description = "The failed job's id.")),
    responses((status = 200, description = "The job, queued again.", body = JobView), crate::openapi::ApiErrors))]
pub async fn retry_dead_letter(
    State(state): State<AppState>,
    admin: Admin,
    IdPath(id): IdPath<JobId>,
) -> ApiResult<Json<JobView>> {
    let job = requeue_dead_letter(&state, admin.tenant_scope(), id).await?;
    tracing::info!(job_id = %id, key_id = %admin.0.owner.key_id, "dead letter sent back to the queue");
    Ok(Json(job))
}
