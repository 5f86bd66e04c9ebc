//! Responses (the Responses API): what a response says beyond the chat completion job that
//! answers it. The job is the response's life (status, reply, usage, events); this table holds
//! its input items, instructions, metadata and the response it continues. A response row always
//! has its job (deleting the job deletes it), and marks the job `response`, which keeps it as
//! long as conversation data is kept rather than as long as other finished jobs.

use crate::db::Db;
use serde_json::Value;
use time::OffsetDateTime;

use crate::ids::{JobId, ResponseId, TenantId};

/// A response to record beside its (already recorded) job.
#[derive(Debug, Clone)]
pub struct NewResponse {
    pub id: ResponseId,
    pub tenant: TenantId,
    pub previous: Option<ResponseId>,
    pub instructions: Option<String>,
    /// The input items, normalised, each with its id.
    pub input: Value,
    pub metadata: Value,
    pub store: bool,
    pub background: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_output_tokens: Option<i32>,
}

/// A stored response (without its job).
#[derive(Debug, Clone)]
pub struct ResponseRow {
    pub id: ResponseId,
    pub previous: Option<ResponseId>,
    pub instructions: Option<String>,
    pub input: Value,
    pub metadata: Value,
    pub store: bool,
    pub background: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_output_tokens: Option<i32>,
    pub created_at: OffsetDateTime,
}

/// What a new response continuing an earlier one takes from it.
#[derive(Debug, Clone)]
pub struct Continued {
    /// The job's status: only a completed response can be continued.
    pub status: String,
    pub had_instructions: bool,
    /// The messages the earlier response's job sent to the provider.
    pub messages: Option<Value>,
    /// Its reply.
    pub reply: Option<String>,
}

/// Records a response beside its job, and marks the job as a response's, in one statement.
/// Returns false when the job is not the tenant's (not in practice: the caller just recorded it).
///
/// # Errors
/// Database errors.
pub async fn insert(pool: &Db, response: &NewResponse) -> Result<bool, sqlx::Error> {
    let marked = sqlx::query_scalar!(
        r#"WITH job AS (
               UPDATE jobs SET response = true WHERE id = $1 AND tenant_id = $2 RETURNING id
           ), inserted AS (
               INSERT INTO responses (id, tenant_id, previous_response_id, instructions, input,
                                      metadata, store, background, temperature, top_p,
                                      max_output_tokens)
               SELECT id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM job
               RETURNING id
           )
           SELECT count(*) AS "count!" FROM inserted"#,
        response.id.as_uuid(),
        response.tenant.as_uuid(),
        response.previous.map(|p| p.as_uuid()),
        response.instructions.as_deref(),
        &response.input,
        &response.metadata,
        response.store,
        response.background,
        response.temperature,
        response.top_p,
        response.max_output_tokens,
    )
    .fetch_one(pool)
    .await?;
    Ok(marked == 1)
}

/// A response, if it is the tenant's.
///
/// # Errors
/// Database errors.
pub async fn get(
    pool: &Db,
    tenant: TenantId,
    id: ResponseId,
) -> Result<Option<ResponseRow>, sqlx::Error> {
    sqlx::query_as!(
        ResponseRow,
        r#"SELECT id AS "id: ResponseId", previous_response_id AS "previous: ResponseId",
                  instructions, input, metadata, store, background, temperature, top_p,
                  max_output_tokens, created_at
             FROM responses WHERE id = $1 AND tenant_id = $2"#,
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(pool)
    .await
}

/// What `previous_response_id` takes from an earlier response of the tenant's.
///
/// # Errors
/// Database errors.
pub async fn continued(
    pool: &Db,
    tenant: TenantId,
    id: ResponseId,
) -> Result<Option<Continued>, sqlx::Error> {
    sqlx::query_as!(
        Continued,
        r#"SELECT j.status, r.instructions IS NOT NULL AS "had_instructions!",
                  j.request -> 'body' -> 'messages' AS messages, j.reply_content AS reply
             FROM responses r JOIN jobs j ON j.id = r.id
            WHERE r.id = $1 AND r.tenant_id = $2"#,
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(pool)
    .await
}

/// Deletes a response with its job. Returns whether there was one.
///
/// # Errors
/// Database errors.
pub async fn delete(pool: &Db, tenant: TenantId, id: ResponseId) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM jobs WHERE id = $1 AND tenant_id = $2 AND response",
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// The job of a response (same uuid).
pub fn job_of(id: ResponseId) -> JobId {
    JobId::from_uuid(id.as_uuid())
}

/// The response a job answers, if it is one (same uuid).
pub fn response_of(id: JobId) -> ResponseId {
    ResponseId::from_uuid(id.as_uuid())
}
