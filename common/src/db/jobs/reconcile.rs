//! What the reconciler reads and writes to keep the JetStream queue in line with Postgres.
//!
//! `published_at` says JetStream acknowledged a copy of a queued job; the reconciler publishes
//! every queued job without it. The functions here clear it whenever that copy may be gone, and
//! bump `publication` (which names the copy, see [`crate::queue::message_id`]) when the old copy may
//! still be remembered by JetStream's duplicate window, so the new one is not dropped.

use crate::db::Db;
use time::OffsetDateTime;

use crate::ids::JobId;
use crate::job::Lane;

/// A queued job JetStream may not hold, to publish again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCopy {
    pub id: JobId,
    pub publication: i32,
    /// The trace of the request that created the job, as recorded (see [`crate::trace`]).
    pub traceparent: Option<String>,
    /// Interactive jobs its tenant has queued now, this one among them: where the copy goes
    /// (see [`crate::queue::Placement`]).
    pub tenant_queued: i32,
}

/// How a stream's creation time compares with the one recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSighting {
    /// None was recorded: this one is now (a new deployment, or one from before this record).
    First,
    /// The same: the stream is the one JetStream had before.
    Known,
    /// Another: the stream was recreated, so whatever the old one held is gone.
    Recreated,
}

/// Records the creation time of a JetStream stream and says how it compares with the one
/// recorded before.
///
/// Safe to race: of several reconcilers noticing the same new stream, exactly one is told
/// [`StreamSighting::Recreated`] (the others wait on the row, then find the time already
/// recorded).
///
/// # Errors
/// Database errors.
pub async fn note_stream_created(
    conn: &mut sqlx::PgConnection,
    stream: &str,
    created_at: OffsetDateTime,
) -> Result<StreamSighting, sqlx::Error> {
    // `xmax = 0` tells a row this statement inserted from one it updated.
    let written = sqlx::query_scalar!(
        r#"INSERT INTO jetstream_streams (name, created_at) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET created_at = excluded.created_at, noticed_at = now()
            WHERE jetstream_streams.created_at IS DISTINCT FROM excluded.created_at
        RETURNING (xmax = 0) AS "inserted!""#,
        stream,
        created_at,
    )
    .fetch_optional(conn)
    .await?;
    Ok(match written {
        None => StreamSighting::Known,
        Some(true) => StreamSighting::First,
        Some(false) => StreamSighting::Recreated,
    })
}

/// Marks every queued job as not in JetStream, after the stream was recreated. Returns how many.
/// Their `Nats-Msg-Id`s stay the same: the new stream's duplicate window is empty.
///
/// # Errors
/// Database errors.
pub async fn forget_publications(conn: &mut sqlx::PgConnection) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        "UPDATE jobs SET published_at = NULL WHERE status = 'queued' AND published_at IS NOT NULL"
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Puts back in the queue running jobs whose lease ran out more than `after_secs` ago: their
/// worker died, and JetStream did not hand the job to another worker in that time (its copy may
/// be gone). Returns how many. Their next claim counts a new attempt.
///
/// # Errors
/// Database errors.
pub async fn requeue_abandoned(pool: &Db, after_secs: f64) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        r#"UPDATE jobs
              SET status = 'queued', claim_token = NULL, claimed_by = NULL, lease_expires_at = NULL,
                  published_at = NULL, publication = publication + 1,
                  error_type = 'worker_lost',
                  error_message = 'the worker running this job stopped; it will run again'
            WHERE status = 'running' AND lease_expires_at < now() - make_interval(secs => $1)"#,
        after_secs,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Notes that JetStream will not deliver a job's copy again (it reached the consumer's
/// `max_deliver`): a queued job gets a new copy at the next reconciler pass, a running one once
/// its worker hands it back. Returns whether the job was unfinished.
///
/// # Errors
/// Database errors.
pub async fn requeue_undeliverable(pool: &Db, id: JobId) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        r#"UPDATE jobs SET published_at = NULL, publication = publication + 1
            WHERE id = $1 AND status IN ('queued', 'running')"#,
        id.as_uuid(),
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Jobs that must have a copy in the jobs stream: queued or running, and published before
/// `before` (a running job's copy stays in the stream until its result is committed).
///
/// # Errors
/// Database errors.
pub async fn expected_copies(pool: &Db, before: OffsetDateTime) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM jobs
            WHERE status IN ('queued', 'running') AND published_at < $1"#,
        before,
    )
    .fetch_one(pool)
    .await
}

/// Claims the audit of a stream for this reconciler, if no reconciler audited it in the last
/// `every_secs`. Returns whether this one should audit now.
///
/// # Errors
/// Database errors.
pub async fn claim_audit(pool: &Db, stream: &str, every_secs: f64) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query_scalar!(
        r#"UPDATE jetstream_streams SET audited_at = now()
            WHERE name = $1
              AND (audited_at IS NULL OR audited_at < now() - make_interval(secs => $2))
        RETURNING name"#,
        stream,
        every_secs,
    )
    .fetch_optional(pool)
    .await?;
    Ok(claimed.is_some())
}

/// A page of queued jobs published before `before`, by id, after `after`.
///
/// # Errors
/// Database errors.
pub async fn published_queued(
    pool: &Db,
    before: OffsetDateTime,
    after: Option<uuid::Uuid>,
    limit: i64,
) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT id FROM jobs
            WHERE status = 'queued' AND published_at < $1 AND ($2::uuid IS NULL OR id > $2)
            ORDER BY id
            LIMIT $3"#,
        before,
        after,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Marks queued jobs whose copy the stream no longer holds as unpublished, under a new
/// publication (the old copy's id may still be in the duplicate window), for the next pass to
/// publish. Returns how many were still queued with that mark.
///
/// # Errors
/// Database errors.
pub async fn forget_lost_copies(
    pool: &Db,
    ids: &[uuid::Uuid],
    before: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        r#"UPDATE jobs SET published_at = NULL, publication = publication + 1
            WHERE id = ANY($1) AND status = 'queued' AND published_at < $2"#,
        ids,
        before,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// The database's clock now.
///
/// # Errors
/// Database errors.
pub async fn now(pool: &Db) -> Result<OffsetDateTime, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
        .fetch_one(pool)
        .await
}

/// One lane's queued jobs without an acknowledged copy in JetStream, recorded more than
/// `older_than_secs` ago (younger ones are still being published by the ingress), oldest first,
/// locked for this reconciler pass (other reconcilers skip them).
///
/// # Errors
/// Database errors.
pub async fn unpublished(
    tx: &mut sqlx::PgConnection,
    lane: Lane,
    older_than_secs: f64,
    limit: i64,
) -> Result<Vec<QueuedCopy>, sqlx::Error> {
    sqlx::query_as!(
        QueuedCopy,
        r#"SELECT j.id AS "id: JobId", j.publication, j.traceparent,
                  coalesce((SELECT sum(u.queued_jobs) FROM tenant_usage u WHERE u.tenant_id = j.tenant_id), 0)::int4
                      AS "tenant_queued!"
             FROM jobs j
            WHERE j.status = 'queued' AND j.published_at IS NULL AND j.lane = $1
              AND j.created_at < now() - make_interval(secs => $2)
            ORDER BY j.created_at
            LIMIT $3
              FOR UPDATE OF j SKIP LOCKED"#,
        lane.as_str(),
        older_than_secs,
        limit,
    )
    .fetch_all(&mut *tx)
    .await
}
