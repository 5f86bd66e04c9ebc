//! Retention: deleting what has been kept long enough, a bounded batch at a time.
//!
//! Each function deletes at most `batch` rows in one short statement and returns how many it
//! deleted; the sweep (`chatq_workers::retention`) calls it again until a batch comes back short.
//! Rows another transaction holds are skipped (`FOR UPDATE SKIP LOCKED`), so a sweep never waits
//! on the hot path, and the hot path waits on a sweep for one small batch at most. A job that is
//! `queued` or `running` is never deleted, whatever its age: not by the job sweeps, which only
//! look at finished statuses, and not with its conversation, which is kept while it has one.
//! A batch's jobs are its output: they are kept with their batch, whatever their age, and go with
//! it once it has ended and its own period has passed.

use crate::db::Db;

/// Deletes up to `batch` jobs that ended `succeeded`, `cancelled` or `expired` more than
/// `older_than_secs` ago. Their messages stay in their conversation.
///
/// # Errors
/// Database errors.
pub async fn delete_finished_jobs(
    pool: &Db,
    older_than_secs: f64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM jobs
          WHERE id IN (SELECT id FROM jobs
                        WHERE status IN ('succeeded', 'cancelled', 'expired')
                          AND finished_at < now() - make_interval(secs => $1)
                          AND batch_id IS NULL
                          AND NOT response
                        ORDER BY finished_at
                        LIMIT $2
                          FOR UPDATE SKIP LOCKED)",
        older_than_secs,
        batch,
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `batch` dead letters (jobs that ended `failed`) that failed more than
/// `older_than_secs` ago.
///
/// # Errors
/// Database errors.
pub async fn delete_dead_letters(
    pool: &Db,
    older_than_secs: f64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM jobs
          WHERE id IN (SELECT id FROM jobs
                        WHERE status = 'failed'
                          AND finished_at < now() - make_interval(secs => $1)
                          AND batch_id IS NULL
                          AND NOT response
                        ORDER BY finished_at
                        LIMIT $2
                          FOR UPDATE SKIP LOCKED)",
        older_than_secs,
        batch,
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `batch` responses (with their jobs) that finished more than `idle_secs` ago:
/// a response is conversation data, kept as long as conversations are. A response still queued
/// or running is never deleted.
///
/// # Errors
/// Database errors.
pub async fn delete_idle_responses(
    pool: &Db,
    idle_secs: f64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM jobs
          WHERE id IN (SELECT id FROM jobs
                        WHERE response
                          AND finished_at < now() - make_interval(secs => $1)
                        ORDER BY finished_at
                        LIMIT $2
                          FOR UPDATE SKIP LOCKED)",
        idle_secs,
        batch,
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `batch` conversations without a message for more than `idle_secs`, with their
/// messages, feedback and jobs, unless one of their jobs is still queued or running.
///
/// A send to a conversation locks its row (it moves `last_activity_at`), so a send racing the
/// sweep either comes first, and the conversation is no longer idle or is skipped, or waits for
/// the deletion and finds the conversation gone (404).
///
/// # Errors
/// Database errors.
pub async fn delete_idle_conversations(
    pool: &Db,
    idle_secs: f64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM conversations
          WHERE id IN (SELECT c.id FROM conversations c
                        WHERE c.last_activity_at < now() - make_interval(secs => $1)
                          AND NOT EXISTS (SELECT 1 FROM jobs j
                                           WHERE j.conversation_id = c.id
                                             AND j.status IN ('queued', 'running'))
                        ORDER BY c.last_activity_at
                        LIMIT $2
                          FOR UPDATE SKIP LOCKED)
            AND NOT EXISTS (SELECT 1 FROM jobs j
                             WHERE j.conversation_id = conversations.id
                               AND j.status IN ('queued', 'running'))",
        idle_secs,
        batch,
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `batch` jobs (lines) of batches that ended more than `older_than_secs` ago; the
/// batches themselves go once their lines are gone ([`delete_ended_batches`]).
///
/// # Errors
/// Database errors.
pub async fn delete_ended_batch_lines(
    pool: &Db,
    older_than_secs: f64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM jobs
          WHERE id IN (SELECT j.id FROM batches b JOIN jobs j ON j.batch_id = b.id
                        WHERE b.status IN ('completed', 'failed', 'expired', 'cancelled')
                          AND coalesce(b.completed_at, b.failed_at, b.expired_at, b.cancelled_at)
                              < now() - make_interval(secs => $1)
                        LIMIT $2
                          FOR UPDATE OF j SKIP LOCKED)",
        older_than_secs,
        batch,
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `batch` batches that ended more than `older_than_secs` ago and have no line left
/// (see [`delete_ended_batch_lines`]), with their refused lines and their output and error files.
///
/// # Errors
/// Database errors.
pub async fn delete_ended_batches(
    pool: &Db,
    older_than_secs: f64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query_scalar!(
        r#"WITH gone AS (
               DELETE FROM batches
                WHERE id IN (SELECT b.id FROM batches b
                              WHERE b.status IN ('completed', 'failed', 'expired', 'cancelled')
                                AND coalesce(b.completed_at, b.failed_at, b.expired_at, b.cancelled_at)
                                    < now() - make_interval(secs => $1)
                                AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)
                              LIMIT $2
                                FOR UPDATE OF b SKIP LOCKED)
               RETURNING id
           ), files_gone AS (
               DELETE FROM files WHERE batch_id IN (SELECT id FROM gone)
           )
           SELECT count(*) AS "deleted!" FROM gone"#,
        older_than_secs,
        batch,
    )
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// Deletes up to `batch` files that are gone for their owner: past their `expires_at` (a batch's
/// `output_expires_after`), or uploaded more than `uploads_older_than_secs` ago (when set). Their
/// bytes go with them.
///
/// # Errors
/// Database errors.
pub async fn delete_expired_files(
    pool: &Db,
    uploads_older_than_secs: Option<f64>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM files
          WHERE id IN (SELECT id FROM files
                        WHERE expires_at <= now()
                           OR (contents = 'upload' AND $1::float8 IS NOT NULL
                               AND created_at < now() - make_interval(secs => $1))
                        LIMIT $2
                          FOR UPDATE SKIP LOCKED)",
        uploads_older_than_secs,
        batch,
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `batch` webhook deliveries that ended (`delivered`, or `failed` after their
/// retries) more than `older_than_secs` ago.
///
/// # Errors
/// Database errors.
pub async fn delete_finished_deliveries(
    pool: &Db,
    older_than_secs: f64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM webhook_outbox
          WHERE id IN (SELECT id FROM webhook_outbox
                        WHERE status <> 'pending'
                          AND finished_at < now() - make_interval(secs => $1)
                        ORDER BY finished_at
                        LIMIT $2
                          FOR UPDATE SKIP LOCKED)",
        older_than_secs,
        batch,
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}
