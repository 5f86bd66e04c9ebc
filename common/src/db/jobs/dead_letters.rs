//! Dead letters as admins see them: jobs that ended `failed` (attempts used up, or an error
//! that can never succeed), of one tenant or (for an operator) of every tenant, and sending one
//! back to the queue.
//!
//! The dead-letter stream in JetStream keeps a copy of each for inspection; this table is the
//! record the admin endpoints read and change.

use crate::db::Db;
use time::OffsetDateTime;

use super::ONE_ACTIVE_PER_CONVERSATION;
use crate::db::quotas::{self, OverQuota, Quota};
use crate::ids::{ConversationId, JobId, TenantId};
use crate::job::{JobStatus, Lane};

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
    pool: &Db,
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
    /// An interactive job whose tenant has as many jobs queued as its quota allows.
    OverQuota(OverQuota),
    NotFound,
}

/// Sends a failed job back to the queue: `queued`, attempts from 0 (the earlier ones are kept in
/// `earlier_attempts`), a new deadline `deadline_secs` from now, a new publication (the old copy
/// may still be in JetStream's duplicate window) not yet published. Only a job of `tenant`
/// (any tenant's when `None`: an operator) is found. An interactive job counts in its tenant's
/// queued-jobs quota again (`max_queued` from the settings, or the tenant's override), checked
/// under the tenant's quota lock as a recording is: a tenant at its quota gets it back only when
/// some of its jobs have left the queue, whoever retries it.
///
/// # Errors
/// Database errors.
pub async fn retry(
    pool: &Db,
    tenant: Option<TenantId>,
    id: JobId,
    deadline_secs: f64,
    max_queued: Option<u32>,
) -> Result<RetryOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let job = sqlx::query!(
        r#"SELECT tenant_id AS "tenant_id: TenantId", lane, status
             FROM jobs WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)"#,
        id.as_uuid(),
        tenant.map(|t| t.as_uuid()),
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = job else {
        return Ok(RetryOutcome::NotFound);
    };
    if job.status != JobStatus::Failed.as_str() {
        return Ok(RetryOutcome::NotFailed(
            job.status.parse().unwrap_or(JobStatus::Failed),
        ));
    }
    if job.lane == Lane::Interactive.as_str() {
        let usage = quotas::lock_usage(&mut tx, &[job.tenant_id], Quota::QueuedJobs).await?;
        if let Some(over) = usage
            .get(&job.tenant_id)
            .and_then(|usage| usage.full(Quota::QueuedJobs, max_queued))
        {
            return Ok(RetryOutcome::OverQuota(over));
        }
    }
    // The status is checked again here, on the row as it is now (another retry may have come
    // first).
    let requeued = sqlx::query!(
        r#"UPDATE jobs
              SET status = 'queued', earlier_attempts = earlier_attempts + attempts, attempts = 0,
                  publication = publication + 1, published_at = NULL,
                  deadline_at = now() + make_interval(secs => $2),
                  finished_at = NULL, claim_token = NULL, claimed_by = NULL, lease_expires_at = NULL,
                  cancel_requested_at = NULL, error_type = NULL, error_message = NULL
            WHERE id = $1 AND status = 'failed'
        RETURNING lane, publication, traceparent"#,
        id.as_uuid(),
        deadline_secs,
    )
    .fetch_optional(&mut *tx)
    .await;
    let outcome = match requeued {
        Ok(Some(row)) => RetryOutcome::Requeued {
            lane: row.lane,
            publication: row.publication,
            traceparent: row.traceparent,
        },
        Ok(None) => {
            let status = sqlx::query_scalar!("SELECT status FROM jobs WHERE id = $1", id.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
            match status {
                Some(status) => {
                    RetryOutcome::NotFailed(status.parse().unwrap_or(JobStatus::Failed))
                }
                None => RetryOutcome::NotFound,
            }
        }
        Err(err) if crate::db::is_unique_violation(&err, ONE_ACTIVE_PER_CONVERSATION) => {
            return Ok(RetryOutcome::ConversationBusy);
        }
        Err(err) => return Err(err),
    };
    tx.commit().await?;
    Ok(outcome)
}
