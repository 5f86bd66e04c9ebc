//! Dead letters as admins see them: jobs that ended `failed` (attempts used up, or an error
//! that can never succeed), of one tenant or (for an operator) of every tenant, and sending one
//! back to the queue.
//!
//! The dead-letter stream in JetStream keeps a copy of each for inspection; this table is the
//! record the admin endpoints read and change.

use sqlx::PgPool;
use time::OffsetDateTime;

use super::ONE_ACTIVE_PER_CONVERSATION;
use crate::ids::{ConversationId, JobId, TenantId};
use crate::job::JobStatus;

/// One failed job.
#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub conversation_id: Option<ConversationId>,
    pub lane: String,
    pub model: String,
    pub attempts: i32,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub created_at: OffsetDateTime,
    pub failed_at: OffsetDateTime,
}

/// Failed jobs, most recent failure first, after the job `after` (keyset pagination): the
/// tenant's, or every tenant's when `tenant` is `None` (an operator).
///
/// # Errors
/// Database errors.
pub async fn list(
    pool: &PgPool,
    tenant: Option<TenantId>,
    limit: i64,
    after: Option<JobId>,
) -> Result<Vec<DeadLetterRow>, sqlx::Error> {
    sqlx::query_as!(
        DeadLetterRow,
        r#"SELECT id AS "id: JobId", tenant_id AS "tenant_id: TenantId",
                  conversation_id AS "conversation_id: ConversationId", lane, model, attempts,
                  error_type, error_message, created_at, finished_at AS "failed_at!"
             FROM jobs
            WHERE status = 'failed' AND finished_at IS NOT NULL
              AND ($3::uuid IS NULL OR tenant_id = $3)
              AND ($2::uuid IS NULL
                   OR (finished_at, id) < (SELECT finished_at, id FROM jobs WHERE id = $2))
            ORDER BY finished_at DESC, id DESC
            LIMIT $1"#,
        limit,
        after.map(|id| id.as_uuid()),
        tenant.map(|t| t.as_uuid()),
    )
    .fetch_all(pool)
    .await
}

/// What retrying a dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Back in the queue with its attempts reset and a fresh deadline; publish this copy, in the
    /// trace of the request that created the job.
    Requeued {
        lane: String,
        publication: i32,
        traceparent: Option<String>,
    },
    /// The job is not failed (it has this status): there is nothing to retry.
    NotFailed(JobStatus),
    /// Its conversation has another reply in progress; retry once that one has finished.
    ConversationBusy,
    NotFound,
}

/// Sends a failed job back to the queue: `queued`, attempts from 0 (the earlier ones are kept in
/// `earlier_attempts`), a new deadline `deadline_secs` from now, a new publication (the old copy
/// may still be in JetStream's duplicate window) not yet published. Only a job of `tenant`
/// (any tenant's when `None`: an operator) is found.
///
/// # Errors
/// Database errors.
pub async fn retry(
    pool: &PgPool,
    tenant: Option<TenantId>,
    id: JobId,
    deadline_secs: f64,
) -> Result<RetryOutcome, sqlx::Error> {
    let requeued = sqlx::query!(
        r#"UPDATE jobs
              SET status = 'queued', earlier_attempts = earlier_attempts + attempts, attempts = 0,
                  publication = publication + 1, published_at = NULL,
                  deadline_at = now() + make_interval(secs => $2),
                  finished_at = NULL, claim_token = NULL, claimed_by = NULL, lease_expires_at = NULL,
                  cancel_requested_at = NULL, error_type = NULL, error_message = NULL
            WHERE id = $1 AND status = 'failed' AND ($3::uuid IS NULL OR tenant_id = $3)
        RETURNING lane, publication, traceparent"#,
        id.as_uuid(),
        deadline_secs,
        tenant.map(|t| t.as_uuid()),
    )
    .fetch_optional(pool)
    .await;
    match requeued {
        Ok(Some(row)) => Ok(RetryOutcome::Requeued {
            lane: row.lane,
            publication: row.publication,
            traceparent: row.traceparent,
        }),
        Ok(None) => {
            let status = sqlx::query_scalar!(
                "SELECT status FROM jobs WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)",
                id.as_uuid(),
                tenant.map(|t| t.as_uuid()),
            )
            .fetch_optional(pool)
            .await?;
            Ok(match status {
                Some(status) => {
                    RetryOutcome::NotFailed(status.parse().unwrap_or(JobStatus::Failed))
                }
                None => RetryOutcome::NotFound,
            })
        }
        Err(err) if crate::db::is_unique_violation(&err, ONE_ACTIVE_PER_CONVERSATION) => {
            Ok(RetryOutcome::ConversationBusy)
        }
        Err(err) => Err(err),
    }
}
