//! A batch's lines: recorded in bulk when the batch is created, read back page by page for its
//! output and error files and for publishing.

use serde_json::Value;
use sqlx::PgConnection;

use crate::db::Db;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::jobs::JobRow;
use crate::db::jobs::read::select_job_rows;
use crate::ids::{BatchId, JobId, TenantId};
use crate::job::{JobRequest, Lane};

/// Lines of one batch, gathered as arrays for `unnest`: one statement writes a thousand of them.
#[derive(Debug, Default)]
pub struct LineRows {
    ids: Vec<Uuid>,
    custom_ids: Vec<String>,
    models: Vec<String>,
    requests: Vec<Value>,
    refused_lines: Vec<i32>,
    refused_custom_ids: Vec<String>,
    refused_statuses: Vec<i16>,
    refused_bodies: Vec<Value>,
}

impl LineRows {
    /// Lines gathered so far.
    pub fn len(&self) -> usize {
        self.ids.len() + self.refused_lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A line to run as a job.
    ///
    /// # Errors
    /// The request cannot be encoded (not in practice).
    pub fn push_job(
        &mut self,
        id: JobId,
        custom_id: String,
        model: String,
        request: &JobRequest,
    ) -> Result<(), serde_json::Error> {
        self.requests.push(serde_json::to_value(request)?);
        self.ids.push(id.as_uuid());
        self.custom_ids.push(custom_id);
        self.models.push(model);
        Ok(())
    }

    /// A line answered at once with the error its request would have got (`line` counts from 1).
    pub fn push_refusal(&mut self, line: i32, custom_id: String, status: u16, body: Value) {
        self.refused_lines.push(line);
        self.refused_custom_ids.push(custom_id);
        self.refused_statuses
            .push(i16::try_from(status).unwrap_or(i16::MAX));
        self.refused_bodies.push(body);
    }

    /// Writes the gathered lines in the batch's transaction, and empties them.
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert(
        &mut self,
        tx: &mut PgConnection,
        tenant: TenantId,
        batch: BatchId,
        deadline: OffsetDateTime,
    ) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "WITH refused AS (
                 INSERT INTO batch_refusals (batch_id, line, custom_id, status_code, body)
                 SELECT $2, t.line, t.custom_id, t.status_code, t.body
                   FROM unnest($8::integer[], $9::text[], $10::smallint[], $11::jsonb[])
                        AS t(line, custom_id, status_code, body)
             )
             INSERT INTO jobs (id, tenant_id, lane, status, request, model, deadline_at, batch_id,
                               custom_id)
             SELECT t.id, $1, $3, 'queued', t.request, t.model, $4, $2, t.custom_id
               FROM unnest($5::uuid[], $6::jsonb[], $7::text[], $12::text[])
                    AS t(id, request, model, custom_id)",
            tenant.as_uuid(),
            batch.as_uuid(),
            Lane::Batch.as_str(),
            deadline,
            &self.ids,
            &self.requests,
            &self.models,
            &self.refused_lines,
            &self.refused_custom_ids,
            &self.refused_statuses,
            &self.refused_bodies,
            &self.custom_ids,
        )
        .execute(tx)
        .await?;
        *self = LineRows::default();
        Ok(())
    }
}

/// The next page of a batch's queued jobs that JetStream has not acknowledged, after `after`.
///
/// # Errors
/// Database errors.
pub async fn unpublished(
    pool: &Db,
    batch: BatchId,
    after: Option<JobId>,
    limit: i64,
) -> Result<Vec<JobId>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT id AS "id: JobId" FROM jobs
            WHERE batch_id = $1 AND status = 'queued' AND published_at IS NULL
              AND ($2::uuid IS NULL OR id > $2)
            ORDER BY id LIMIT $3"#,
        batch.as_uuid(),
        after.map(|id| id.as_uuid()),
        limit,
    )
    .fetch_all(pool)
    .await
}

/// A line that ran (or was meant to), with the job it became.
#[derive(Debug, Clone)]
pub struct LineJob {
    pub custom_id: String,
    pub job: JobRow,
}

/// The next page of a batch's jobs that ended `succeeded` (`answered`) or ended otherwise, after
/// `after`, in line order.
///
/// # Errors
/// Database errors.
pub async fn ended(
    pool: &Db,
    batch: BatchId,
    answered: bool,
    after: Option<JobId>,
    limit: i64,
) -> Result<Vec<LineJob>, sqlx::Error> {
    let custom_ids = sqlx::query!(
        r#"SELECT id AS "id: JobId", custom_id AS "custom_id!" FROM jobs
            WHERE batch_id = $1
              AND status = ANY(CASE WHEN $2 THEN ARRAY['succeeded']
                                    ELSE ARRAY['failed', 'expired', 'cancelled'] END)
              AND ($3::uuid IS NULL OR id > $3)
            ORDER BY id LIMIT $4"#,
        batch.as_uuid(),
        answered,
        after.map(|id| id.as_uuid()),
        limit,
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = custom_ids.iter().map(|row| row.id.as_uuid()).collect();
    let mut jobs = select_job_rows!("", "jobs WHERE id = ANY($1) ORDER BY id", &ids[..])
        .fetch_all(pool)
        .await?
        .into_iter();
    // Same ids, same order: pair them up (a job deleted in between is left out).
    let mut lines = Vec::with_capacity(custom_ids.len());
    let mut next = jobs.next();
    for row in custom_ids {
        if let Some(job) = next.take_if(|job| job.id == row.id) {
            lines.push(LineJob {
                custom_id: row.custom_id,
                job,
            });
            next = jobs.next();
        }
    }
    Ok(lines)
}

/// A refused line, as its error file line is written.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub line: i32,
    pub custom_id: String,
    pub status_code: i16,
    pub body: Value,
}

/// The next page of a batch's refused lines, after line `after`.
///
/// # Errors
/// Database errors.
pub async fn refusals(
    pool: &Db,
    batch: BatchId,
    after: i32,
    limit: i64,
) -> Result<Vec<Refusal>, sqlx::Error> {
    sqlx::query_as!(
        Refusal,
        "SELECT line, custom_id, status_code, body FROM batch_refusals
          WHERE batch_id = $1 AND line > $2 ORDER BY line LIMIT $3",
        batch.as_uuid(),
        after,
        limit,
    )
    .fetch_all(pool)
    .await
}
