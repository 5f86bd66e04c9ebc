//! Reading jobs: as clients see them, by id or by idempotency key.

use crate::db::Db;
use serde_json::Value;
use time::OffsetDateTime;

use crate::ids::{ConversationId, JobId, MessageId, TenantId};
use crate::job::JobStatus;

/// A job as stored, as clients see it through `GET /v1/jobs/{id}`.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub conversation_id: Option<ConversationId>,
    pub lane: String,
    pub status: String,
    pub model: String,
    pub user_message_id: Option<MessageId>,
    pub attempts: i32,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub deadline_at: OffsetDateTime,
    pub queued_ms: Option<i32>,
    pub ttft_ms: Option<i32>,
    pub upstream_ms: Option<i32>,
    pub reply_message_id: Option<MessageId>,
    pub reply_content: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub cached: bool,
    /// Which tier served a cached reply (`exact` or `semantic`; `None` for older rows too).
    pub cache_tier: Option<String>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub request_hash: Option<Vec<u8>>,
    /// The model the provider says answered (set with the reply).
    pub reply_model: Option<String>,
    /// Attempts before the job was last sent back from the dead letters.
    pub earlier_attempts: i32,
    /// A chat completion's whole answer, as [`crate::choices::Choice`]s.
    pub reply_choices: Option<Value>,
}

impl JobRow {
    /// The status, or `failed` for a value this build does not know.
    pub fn status(&self) -> JobStatus {
        self.status.parse().unwrap_or(JobStatus::Failed)
    }

    /// Attempts in all, the count event ids are numbered by.
    pub fn event_attempts(&self) -> u32 {
        u32::try_from(self.earlier_attempts + self.attempts).unwrap_or(0)
    }
}

/// `<before> SELECT <every column of JobRow> FROM <source>`: the one column list jobs are read
/// with, from the table or from the rows a write returned (`WITH done AS (UPDATE … RETURNING
/// jobs.*)`, then `done` as the source).
macro_rules! select_job_rows {
    ($before:literal, $source:literal, $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(
            $crate::db::jobs::read::JobRow,
            $before + r#"SELECT id AS "id!: crate::ids::JobId", tenant_id AS "tenant_id!: crate::ids::TenantId",
                      conversation_id AS "conversation_id?: crate::ids::ConversationId",
                      lane AS "lane!", status AS "status!", model AS "model!",
                      user_message_id AS "user_message_id?: crate::ids::MessageId",
                      attempts AS "attempts!", created_at AS "created_at!", started_at AS "started_at?",
                      finished_at AS "finished_at?", deadline_at AS "deadline_at!",
                      queued_ms AS "queued_ms?", ttft_ms AS "ttft_ms?", upstream_ms AS "upstream_ms?",
                      reply_message_id AS "reply_message_id?: crate::ids::MessageId",
                      reply_content AS "reply_content?", finish_reason AS "finish_reason?",
                      usage AS "usage?", cached AS "cached!", cache_tier AS "cache_tier?", error_type AS "error_type?",
                      error_message AS "error_message?", request_hash AS "request_hash?",
                      reply_model AS "reply_model?", earlier_attempts AS "earlier_attempts!",
                      reply_choices AS "reply_choices?"
                 FROM "# + $source,
            $($arg),+
        )
    };
}
pub(crate) use select_job_rows;

/// A job, if it belongs to the tenant.
///
/// # Errors
/// Database errors.
pub async fn get(pool: &Db, tenant: TenantId, id: JobId) -> Result<Option<JobRow>, sqlx::Error> {
    select_job_rows!(
        "",
        "jobs WHERE id = $1 AND tenant_id = $2",
        id.as_uuid(),
        tenant.as_uuid()
    )
    .fetch_optional(pool)
    .await
}

/// A job by id alone, whoever's it is: for internal readers (event hubs) that were handed a job
/// id after the tenant check.
///
/// # Errors
/// Database errors.
pub async fn get_any(pool: &Db, id: JobId) -> Result<Option<JobRow>, sqlx::Error> {
    select_job_rows!("", "jobs WHERE id = $1", id.as_uuid())
        .fetch_optional(pool)
        .await
}

/// Of the jobs `ids`, those no longer queued or running, and those that no longer exist: what
/// event hubs look for, for all the jobs they follow at once (see `ingress::hub`).
///
/// # Errors
/// Database errors.
pub async fn ended_or_gone(pool: &Db, ids: &[uuid::Uuid]) -> Result<Vec<JobId>, sqlx::Error> {
    let ended = sqlx::query_scalar!(
        r#"SELECT followed.id AS "id!"
             FROM unnest($1::uuid[]) AS followed (id)
             LEFT JOIN jobs ON jobs.id = followed.id
            WHERE jobs.id IS NULL OR jobs.status NOT IN ('queued', 'running')"#,
        ids,
    )
    .fetch_all(pool)
    .await?;
    Ok(ended.into_iter().map(JobId::from_uuid).collect())
}

/// The job first recorded with this idempotency key.
///
/// # Errors
/// Database errors.
pub async fn find_by_idempotency_key(
    pool: &Db,
    tenant: TenantId,
    key: &str,
) -> Result<Option<JobRow>, sqlx::Error> {
    select_job_rows!(
        "",
        "jobs WHERE tenant_id = $1 AND idempotency_key = $2",
        tenant.as_uuid(),
        key
    )
    .fetch_optional(pool)
    .await
}
