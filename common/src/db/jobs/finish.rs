//! Ending an attempt: a reply written, the job handed back for another attempt, or ended without
//! a reply; and cancelling. Every write by a worker is fenced by its claim token, and every write
//! that ends a job returns the job as committed, for its terminal event.

use crate::db::Db;
use uuid::Uuid;

use super::read::{JobRow, select_job_rows};
use crate::chat::Usage;
use crate::choices::Choice;
use crate::ids::{ConversationId, JobId, MessageId, TenantId};
use crate::job::JobStatus;
use crate::reply_cache::CacheTier;

/// The error message of a job cancelled before or while it ran.
pub const CANCELLED_MESSAGE: &str = "the job was cancelled at the client's request";

/// The result of a successful attempt.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: JobId,
    pub token: Uuid,
    /// The conversation the reply goes into (none for a chat completion).
    pub conversation_id: Option<ConversationId>,
    pub reply_message_id: MessageId,
    pub content: String,
    pub finish_reason: String,
    pub usage: Usage,
    pub ttft_ms: Option<i32>,
    pub upstream_ms: i32,
    /// The cache tier that served the reply, or `None` when the provider answered it.
    pub cache: Option<CacheTier>,
    /// The model the provider says answered.
    pub reply_model: String,
    /// A chat completion's whole answer (`None` for a conversation turn, whose reply is
    /// `content`).
    pub choices: Option<Vec<Choice>>,
}

/// Writes replies: for each job the result and, for a conversation turn, the reply message, in
/// one transaction. Returns, in order, the job as committed, or `None` when its claim was no
/// longer ours (nothing is written for that job then).
///
/// The conversations are locked first, in id order, as every write that touches a conversation
/// and its jobs does (a conversation deleted meanwhile then simply has no job left to write).
///
/// # Errors
/// Database errors.
pub async fn complete(pool: &Db, done: &[Completion]) -> Result<Vec<Option<JobRow>>, sqlx::Error> {
    let ids: Vec<Uuid> = done.iter().map(|d| d.id.as_uuid()).collect();
    let tokens: Vec<Uuid> = done.iter().map(|d| d.token).collect();
    let reply_ids: Vec<Uuid> = done.iter().map(|d| d.reply_message_id.as_uuid()).collect();
    let contents: Vec<String> = done.iter().map(|d| d.content.clone()).collect();
    let finish_reasons: Vec<String> = done.iter().map(|d| d.finish_reason.clone()).collect();
    let usages: Vec<serde_json::Value> = done
        .iter()
        .map(|d| serde_json::to_value(d.usage).unwrap_or(serde_json::Value::Null))
        .collect();
    let ttfts: Vec<Option<i32>> = done.iter().map(|d| d.ttft_ms).collect();
    let upstreams: Vec<i32> = done.iter().map(|d| d.upstream_ms).collect();
    let cached: Vec<bool> = done.iter().map(|d| d.cache.is_some()).collect();
    let tiers: Vec<Option<String>> = done
        .iter()
        .map(|d| d.cache.map(|tier| tier.as_str().to_owned()))
        .collect();
    let models: Vec<String> = done.iter().map(|d| d.reply_model.clone()).collect();
    let choices: Vec<Option<serde_json::Value>> = done
        .iter()
        .map(|d| {
            d.choices
                .as_ref()
                .and_then(|c| serde_json::to_value(c).ok())
        })
        .collect();
    let mut conversations: Vec<Uuid> = done
        .iter()
        .filter_map(|d| d.conversation_id.map(|c| c.as_uuid()))
        .collect();
    conversations.sort_unstable();
    conversations.dedup();

    let mut tx = pool.begin().await?;
    if !conversations.is_empty() {
        sqlx::query!(
            "SELECT id FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &conversations,
        )
        .fetch_all(&mut *tx)
        .await?;
    }
    let written = select_job_rows!(
        r#"WITH job AS (
               UPDATE jobs
                  SET status = 'succeeded', finished_at = now(),
                      reply_message_id = CASE WHEN jobs.conversation_id IS NULL THEN NULL ELSE t.reply_id END,
                      reply_content = t.content, finish_reason = t.finish_reason, usage = t.usage,
                      ttft_ms = t.ttft, upstream_ms = t.upstream, cached = t.cached, cache_tier = t.tier, reply_model = t.model,
                      reply_choices = t.choices,
                      claim_token = NULL, lease_expires_at = NULL, error_type = NULL, error_message = NULL
                 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::jsonb[],
                             $7::integer[], $8::integer[], $9::boolean[], $10::text[], $11::jsonb[], $12::text[])
                      AS t(id, token, reply_id, content, finish_reason, usage, ttft, upstream, cached, model, choices, tier)
                WHERE jobs.id = t.id AND jobs.claim_token = t.token AND jobs.status = 'running'
            RETURNING jobs.*
           ), conv AS (
               UPDATE conversations c
                  SET next_seq = next_seq + 1, message_count = message_count + 1, last_activity_at = now()
                 FROM job
                WHERE c.id = job.conversation_id
            RETURNING c.id, c.tenant_id, c.next_seq - 1 AS seq
           ), reply AS (
               INSERT INTO messages (id, conversation_id, tenant_id, seq, role, content, job_id)
               SELECT job.reply_message_id, conv.id, conv.tenant_id, conv.seq, 'assistant', job.reply_content, job.id
                 FROM job JOIN conv ON conv.id = job.conversation_id
           )
           "#,
        "job",
        &ids,
        &tokens,
        &reply_ids,
        &contents[..],
        &finish_reasons[..],
        &usages,
        &ttfts[..] as _,
        &upstreams,
        &cached,
        &models[..],
        &choices[..] as _,
        &tiers[..] as _,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut written: std::collections::HashMap<JobId, JobRow> =
        written.into_iter().map(|row| (row.id, row)).collect();
    Ok(done.iter().map(|d| written.remove(&d.id)).collect())
}

/// Hands a job back for another attempt, keeping the error for clients to see meanwhile.
/// `refund_attempt` takes back the attempt this claim counted (a worker that stopped before it
/// could try is not a failed attempt). Returns `false` when the claim was no longer ours.
///
/// # Errors
/// Database errors.
pub async fn release(
    pool: &Db,
    id: JobId,
    token: Uuid,
    refund_attempt: bool,
    error_type: &str,
    error_message: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        r#"UPDATE jobs SET status = 'queued', claim_token = NULL, lease_expires_at = NULL,
                           attempts = attempts - CASE WHEN $3 THEN 1 ELSE 0 END,
                           error_type = $4, error_message = $5
            WHERE id = $1 AND claim_token = $2 AND status = 'running'"#,
        id.as_uuid(),
        token,
        refund_attempt,
        error_type,
        error_message,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Ends a claimed job as `failed`, `cancelled` or `expired`. Returns the job as committed, or
/// `None` when the claim was no longer ours.
///
/// # Errors
/// Database errors.
pub async fn finish_unsuccessfully(
    pool: &Db,
    id: JobId,
    token: Uuid,
    status: JobStatus,
    error_type: &str,
    error_message: &str,
    upstream_ms: Option<i32>,
) -> Result<Option<JobRow>, sqlx::Error> {
    select_job_rows!(
        r#"WITH done AS (
               UPDATE jobs SET status = $3, finished_at = now(), claim_token = NULL, lease_expires_at = NULL,
                               error_type = $4, error_message = $5, upstream_ms = coalesce($6, upstream_ms)
                WHERE id = $1 AND claim_token = $2 AND status = 'running'
            RETURNING *
           )
           "#,
        "done",
        id.as_uuid(),
        token,
        status.as_str(),
        error_type,
        error_message,
        upstream_ms,
    )
    .fetch_optional(pool)
    .await
}

/// What a cancel request did.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The job was queued and is now `cancelled`, as committed.
    Cancelled(Box<JobRow>),
    /// The job is running: the cancel is recorded for its worker to act on.
    Requested,
    /// The job had already finished with this status.
    Finished(JobStatus),
    /// No such job for this tenant.
    NotFound,
}

/// Cancels a job: a queued one at once (in the same statement, so no worker can claim it in
/// between); a running one is marked, and its worker ends it.
///
/// # Errors
/// Database errors.
pub async fn request_cancel(
    pool: &Db,
    tenant: TenantId,
    id: JobId,
) -> Result<CancelOutcome, sqlx::Error> {
    // On the right of SET, `status` is the old value; RETURNING gives the new one.
    let updated = select_job_rows!(
        r#"WITH marked AS (
               UPDATE jobs
                  SET cancel_requested_at = coalesce(cancel_requested_at, now()),
                      status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
                      finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
                      error_type = CASE WHEN status = 'queued' THEN 'cancelled' ELSE error_type END,
                      error_message = CASE WHEN status = 'queued' THEN $3 ELSE error_message END
                WHERE id = $1 AND tenant_id = $2 AND status IN ('queued', 'running')
            RETURNING *
           )
           "#,
        "marked",
        id.as_uuid(),
        tenant.as_uuid(),
        CANCELLED_MESSAGE,
    )
    .fetch_optional(pool)
    .await?;
    if let Some(row) = updated {
        return Ok(if row.status() == JobStatus::Cancelled {
            CancelOutcome::Cancelled(Box::new(row))
        } else {
            CancelOutcome::Requested
        });
    }
    Ok(match super::get(pool, tenant, id).await? {
        Some(job) => CancelOutcome::Finished(job.status()),
        None => CancelOutcome::NotFound,
    })
}

/// Cancels a job only if it is still queued (no worker has it, so the provider was not called
/// for it). Returns the job as committed, or `None` when it was no longer queued.
///
/// # Errors
/// Database errors.
pub async fn cancel_queued(
    pool: &Db,
    tenant: TenantId,
    id: JobId,
) -> Result<Option<JobRow>, sqlx::Error> {
    select_job_rows!(
        r#"WITH cancelled AS (
               UPDATE jobs
                  SET cancel_requested_at = now(), status = 'cancelled', finished_at = now(),
                      error_type = 'cancelled', error_message = $3
                WHERE id = $1 AND tenant_id = $2 AND status = 'queued'
            RETURNING *
           )
           "#,
        "cancelled",
        id.as_uuid(),
        tenant.as_uuid(),
        CANCELLED_MESSAGE,
    )
    .fetch_optional(pool)
    .await
}

/// Ends a job whose cancel was requested and that no live claim holds (it was queued, or its
/// worker died): `cancelled`, without calling the provider. Returns the job as committed, or
/// `None` when there was nothing to end (already finished, or held).
///
/// # Errors
/// Database errors.
pub async fn finish_cancelled(pool: &Db, id: JobId) -> Result<Option<JobRow>, sqlx::Error> {
    select_job_rows!(
        r#"WITH ended AS (
               UPDATE jobs SET status = 'cancelled', finished_at = now(), claim_token = NULL,
                               lease_expires_at = NULL, error_type = 'cancelled', error_message = $2
                WHERE id = $1 AND cancel_requested_at IS NOT NULL
                  AND (status = 'queued' OR (status = 'running' AND lease_expires_at < now()))
            RETURNING *
           )
           "#,
        "ended",
        id.as_uuid(),
        CANCELLED_MESSAGE,
    )
    .fetch_optional(pool)
    .await
}
