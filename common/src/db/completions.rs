//! Stateless chat completions (`POST /v1/chat/completions`): a job with its whole prompt, and no
//! conversation. They run through the same queue as conversation turns, on the interactive lane.

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::ids::{JobId, TenantId};
use crate::job::{JobRequest, Lane};

/// A chat completion to record.
#[derive(Debug, Clone)]
pub struct NewCompletion<'a> {
    pub tenant: TenantId,
    pub job_id: JobId,
    pub lane: Lane,
    pub request: &'a JobRequest,
    pub model: &'a str,
    pub deadline_secs: f64,
}

/// Records the job; returns when it was created.
///
/// # Errors
/// Database errors.
pub async fn enqueue(
    pool: &PgPool,
    new: &NewCompletion<'_>,
) -> Result<OffsetDateTime, sqlx::Error> {
    let request =
        serde_json::to_value(new.request).map_err(|err| sqlx::Error::Encode(err.into()))?;
    sqlx::query_scalar!(
        r#"INSERT INTO jobs (id, tenant_id, lane, status, request, model, deadline_at)
           VALUES ($1, $2, $3, 'queued', $4, $5, now() + make_interval(secs => $6))
           RETURNING created_at"#,
        new.job_id.as_uuid(),
        new.tenant.as_uuid(),
        new.lane.as_str(),
        request,
        new.model,
        new.deadline_secs,
    )
    .fetch_one(pool)
    .await
}
