//! Batches: a file of chat completion requests, each line run as a job on the batch lane.
//!
//! A batch is recorded `validating` ([`insert_validating`]) and answered at once; its input is
//! then validated and its lines recorded ([`lines`]) in one transaction that holds the batch's row
//! ([`lock_validating`]) and ends it `in_progress` ([`start`]) or `failed`
//! ([`fail_validation`]): every valid line a queued job, every line chat completions would refuse
//! a refusal, answered in the error file. A validation cut short (its ingress stopped) leaves the
//! batch `validating` and its row free, for another ingress to take up ([`stale_validating`]). Its
//! counts are read from its jobs, never kept beside them, so they cannot drift: what is done is
//! what the jobs say. [`settle`] moves a batch on when its jobs allow it (every line ended, or
//! the completion window closed), in one statement, whoever reads the batch first.
//!
//! Every query is scoped by tenant: another tenant's batch does not exist.

pub mod lines;

use sqlx::PgConnection;

use crate::db::Db;
use time::OffsetDateTime;

use crate::ids::{BatchId, FileId, TenantId};

/// A batch as stored.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub id: BatchId,
    pub input_file_id: FileId,
    pub endpoint: String,
    pub completion_window: String,
    pub status: String,
    /// The model the lines ask for (null until validated, and when they ask for several).
    pub model: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub output_file_id: Option<FileId>,
    pub error_file_id: Option<FileId>,
    pub errors: Option<serde_json::Value>,
    pub total: i32,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub in_progress_at: Option<OffsetDateTime>,
    pub finalizing_at: Option<OffsetDateTime>,
    pub completed_at: Option<OffsetDateTime>,
    pub failed_at: Option<OffsetDateTime>,
    pub expired_at: Option<OffsetDateTime>,
    pub cancelling_at: Option<OffsetDateTime>,
    pub cancelled_at: Option<OffsetDateTime>,
}

/// `SELECT <every column of BatchRow> FROM <source>`.
macro_rules! select_batch_rows {
    ($before:literal, $source:literal, $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(
            BatchRow,
            $before + r#"SELECT id AS "id!: BatchId", input_file_id AS "input_file_id!: FileId",
                      endpoint AS "endpoint!", completion_window AS "completion_window!",
                      status AS "status!", model, metadata, output_file_id AS "output_file_id?: FileId",
                      error_file_id AS "error_file_id?: FileId", errors, total AS "total!",
                      created_at AS "created_at!", expires_at AS "expires_at!", in_progress_at,
                      finalizing_at, completed_at, failed_at, expired_at, cancelling_at,
                      cancelled_at
                 FROM "# + $source,
            $($arg),+
        )
    };
}

/// A batch to create.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: BatchId,
    pub tenant: TenantId,
    pub input_file_id: FileId,
    pub endpoint: String,
    pub completion_window: String,
    pub window_secs: f64,
    pub metadata: Option<serde_json::Value>,
    pub output_expires_secs: Option<i64>,
}

/// Records a batch to validate: `validating`, answered at once; its lines are read and recorded
/// in the background.
///
/// # Errors
/// Database errors.
pub async fn insert_validating(pool: &Db, batch: &NewBatch) -> Result<BatchRow, sqlx::Error> {
    select_batch_rows!(
        r#"WITH created AS (
               INSERT INTO batches (id, tenant_id, input_file_id, endpoint, completion_window,
                                    status, metadata, output_expires_secs, expires_at)
               VALUES ($1, $2, $3, $4, $5, 'validating', $6, $7, now() + make_interval(secs => $8))
               RETURNING *
           )
           "#,
        "created",
        batch.id.as_uuid(),
        batch.tenant.as_uuid(),
        batch.input_file_id.as_uuid(),
        batch.endpoint,
        batch.completion_window,
        batch.metadata,
        batch.output_expires_secs,
        batch.window_secs,
    )
    .fetch_one(pool)
    .await
}

/// A batch being validated: what its lines are recorded with.
#[derive(Debug, Clone, Copy)]
pub struct Validating {
    pub id: BatchId,
    pub tenant: TenantId,
    pub input_file_id: FileId,
    pub created_at: OffsetDateTime,
    /// When its completion window ends: the deadline of every line.
    pub expires_at: OffsetDateTime,
    pub output_expires_secs: Option<i64>,
}

/// Takes a `validating` batch for this transaction, or `None` when it is no longer validating or
/// another transaction holds it (its validation is under way there). The row stays locked until
/// the transaction ends: a cancel waits for the validation to end, and a validation cut short
/// frees the batch for another.
///
/// # Errors
/// Database errors.
pub async fn lock_validating(
    tx: &mut PgConnection,
    id: BatchId,
) -> Result<Option<Validating>, sqlx::Error> {
    sqlx::query_as!(
        Validating,
        r#"SELECT id AS "id: BatchId", tenant_id AS "tenant: TenantId",
                  input_file_id AS "input_file_id: FileId", created_at, expires_at,
                  output_expires_secs
             FROM batches WHERE id = $1 AND status = 'validating'
              FOR UPDATE SKIP LOCKED"#,
        id.as_uuid(),
    )
    .fetch_optional(tx)
    .await
}

/// Batches still `validating` more than `older_than_secs` after they were created, which no
/// transaction holds: their validation was cut short.
///
/// # Errors
/// Database errors.
pub async fn stale_validating(
    pool: &Db,
    older_than_secs: f64,
    limit: i64,
) -> Result<Vec<BatchId>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT id AS "id: BatchId" FROM batches
            WHERE status = 'validating' AND created_at < now() - make_interval(secs => $1)
            ORDER BY created_at
            LIMIT $2
              FOR UPDATE SKIP LOCKED"#,
        older_than_secs,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Ends a validation that passed: the batch is `in_progress`, with its total, model and output and
/// error files (its lines are recorded in the same transaction by [`lines::insert`]).
///
/// # Errors
/// Database errors.
pub async fn start(
    tx: &mut PgConnection,
    id: BatchId,
    total: i32,
    model: Option<&str>,
    output: FileId,
    errors: FileId,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE batches
            SET status = 'in_progress', in_progress_at = now(), total = $2, model = $3,
                output_file_id = $4, error_file_id = $5
          WHERE id = $1 AND status = 'validating'",
        id.as_uuid(),
        total,
        model,
        output.as_uuid(),
        errors.as_uuid(),
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Ends a validation that found lines that are not batch requests: the batch is `failed`, with
/// the errors of those lines, and none of its lines is kept.
///
/// # Errors
/// Database errors.
pub async fn fail_validation(
    tx: &mut PgConnection,
    id: BatchId,
    total: i32,
    errors: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE batches SET status = 'failed', failed_at = now(), total = $2, errors = $3
          WHERE id = $1 AND status = 'validating'",
        id.as_uuid(),
        total,
        errors,
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// A batch, if it belongs to the tenant.
///
/// # Errors
/// Database errors.
pub async fn get(
    pool: &Db,
    tenant: TenantId,
    id: BatchId,
) -> Result<Option<BatchRow>, sqlx::Error> {
    select_batch_rows!(
        "",
        "batches WHERE id = $1 AND tenant_id = $2",
        id.as_uuid(),
        tenant.as_uuid()
    )
    .fetch_optional(pool)
    .await
}

/// Newest first. Returns up to `limit + 1` rows so the caller can tell whether there are more.
///
/// # Errors
/// Database errors.
pub async fn list(
    pool: &Db,
    tenant: TenantId,
    after: Option<BatchId>,
    limit: i64,
) -> Result<Vec<BatchRow>, sqlx::Error> {
    select_batch_rows!(
        "",
        "batches WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        tenant.as_uuid(),
        after.map(|id| id.as_uuid()),
        limit + 1,
    )
    .fetch_all(pool)
    .await
}

/// Cancels a batch: no line starts after this (its queued lines end `cancelled` in the same
/// statement, so no worker can claim one in between); lines already running finish and are kept.
/// Returns the batch as it is now, `None` when the tenant has no such batch.
///
/// # Errors
/// Database errors.
pub async fn cancel(
    pool: &Db,
    tenant: TenantId,
    id: BatchId,
) -> Result<Option<BatchRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let marked = sqlx::query_scalar!(
        "UPDATE batches SET status = 'cancelling', cancelling_at = now()
          WHERE id = $1 AND tenant_id = $2 AND status IN ('validating', 'in_progress')
         RETURNING id",
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    if marked.is_some() {
        sqlx::query!(
            "UPDATE jobs SET status = 'cancelled', finished_at = now(), cancel_requested_at = now(),
                             error_type = 'batch_cancelled',
                             error_message = 'The batch was cancelled before this request ran.'
              WHERE batch_id = $1 AND status = 'queued'",
            id.as_uuid(),
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    settle(pool, tenant, id).await
}

/// Moves a batch on as far as its lines allow, and returns it (`None`: no such batch for the
/// tenant):
///
/// - past its completion window, lines still queued end `expired` (a running one ends at the
///   same deadline, in its worker);
/// - once no line is queued or running, `in_progress` ends `completed` (or `expired`, when the
///   window closed on some of its lines) and `cancelling` ends `cancelled`.
///
/// # Errors
/// Database errors.
pub async fn settle(
    pool: &Db,
    tenant: TenantId,
    id: BatchId,
) -> Result<Option<BatchRow>, sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET status = 'expired', finished_at = now(), error_type = 'batch_expired',
                         error_message = 'The batch''s completion window ended before this request ran.'
          WHERE batch_id = $1 AND status = 'queued'
            AND EXISTS (SELECT 1 FROM batches b
                         WHERE b.id = $1 AND b.tenant_id = $2 AND b.status = 'in_progress'
                           AND b.expires_at <= now())",
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .execute(pool)
    .await?;
    select_batch_rows!(
        r#"WITH settled AS (
               UPDATE batches b
                  SET status = CASE
                          WHEN b.status = 'cancelling' THEN 'cancelled'
                          WHEN b.expires_at <= now() AND EXISTS (
                                   SELECT 1 FROM jobs j WHERE j.batch_id = b.id AND j.status = 'expired')
                              THEN 'expired'
                          ELSE 'completed' END,
                      cancelled_at = CASE WHEN b.status = 'cancelling' THEN now() END,
                      finalizing_at = CASE WHEN b.status = 'in_progress' THEN now() END,
                      completed_at = CASE WHEN b.status = 'in_progress' AND (b.expires_at > now()
                              OR NOT EXISTS (SELECT 1 FROM jobs j
                                              WHERE j.batch_id = b.id AND j.status = 'expired'))
                          THEN now() END,
                      expired_at = CASE WHEN b.status = 'in_progress' AND b.expires_at <= now()
                              AND EXISTS (SELECT 1 FROM jobs j
                                           WHERE j.batch_id = b.id AND j.status = 'expired')
                          THEN now() END
                WHERE b.id = $1 AND b.tenant_id = $2 AND b.status IN ('in_progress', 'cancelling')
                  AND NOT EXISTS (SELECT 1 FROM jobs j
                                   WHERE j.batch_id = b.id AND j.status IN ('queued', 'running'))
               RETURNING *
           )
           "#,
        "settled",
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(pool)
    .await?;
    get(pool, tenant, id).await
}

/// How a batch's lines stand, and the tokens its answered lines used.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    /// Lines that ended without an answer: failed, expired, cancelled, or refused as invalid.
    pub unanswered: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
}

/// Counts a batch's lines from its jobs and refusals.
///
/// # Errors
/// Database errors.
pub async fn counts(pool: &Db, id: BatchId) -> Result<LineCounts, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE status = 'queued') AS "queued!",
                  count(*) FILTER (WHERE status = 'running') AS "running!",
                  count(*) FILTER (WHERE status = 'succeeded') AS "succeeded!",
                  count(*) FILTER (WHERE status IN ('failed', 'expired', 'cancelled')) AS "unanswered!",
                  coalesce(sum((usage->>'prompt_tokens')::bigint), 0)::bigint AS "prompt_tokens!",
                  coalesce(sum((usage->>'completion_tokens')::bigint), 0)::bigint AS "completion_tokens!",
                  coalesce(sum((usage#>>'{prompt_tokens_details,cached_tokens}')::bigint), 0)::bigint AS "cached_tokens!",
                  coalesce(sum((usage#>>'{completion_tokens_details,reasoning_tokens}')::bigint), 0)::bigint AS "reasoning_tokens!",
                  (SELECT count(*) FROM batch_refusals WHERE batch_id = $1) AS "refused!"
             FROM jobs WHERE batch_id = $1"#,
        id.as_uuid(),
    )
    .fetch_one(pool)
    .await?;
    Ok(LineCounts {
        queued: row.queued,
        running: row.running,
        succeeded: row.succeeded,
        unanswered: row.unanswered + row.refused,
        prompt_tokens: row.prompt_tokens,
        completion_tokens: row.completion_tokens,
        cached_tokens: row.cached_tokens,
        reasoning_tokens: row.reasoning_tokens,
    })
}
