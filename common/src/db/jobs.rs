//! Jobs: recorded by the ingress, claimed and finished by workers, republished by the reconciler.
//!
//! The life of a job in this table:
//!
//! 1. [`enqueue_turn`] records the user message and the job (`queued`) in one statement.
//! 2. The ingress publishes it to JetStream and [`mark_published`] notes the acknowledgement.
//! 3. A worker [`claim`]s it (`running`, a fresh claim token and a lease) before calling the provider.
//!    A job that is already finished, or held by a live claim, is not claimed again.
//! 4. The worker [`complete`]s it (reply message and result in one statement), or [`release`]s it for
//!    a later attempt, or [`finish_unsuccessfully`]. Each of these needs the claim token, so a worker
//!    whose claim was taken over cannot write.
//!
//! A client may [`request_cancel`] at any point: a queued job ends `cancelled` at once; a running
//! one is marked, its worker notices (told over NATS, or by its next lease renewal) and ends it; a
//! job whose worker died is ended by the next delivery ([`finish_cancelled`]).
//!
//! [`reconcile`] holds what the reconciler needs to rebuild the queue from this table, and
//! [`dead_letters`] the operator's view of jobs that failed for good.

pub mod batch;
pub mod dead_letters;
pub mod reconcile;

use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::chat::Usage;
use crate::ids::{ConversationId, JobId, MessageId, TenantId};
use crate::job::{JobRequest, JobStatus};

/// The constraint behind 409 `conversation_busy`.
pub const ONE_ACTIVE_PER_CONVERSATION: &str = "jobs_one_active_per_conversation";
/// The constraint behind idempotent retries.
pub const IDEMPOTENCY_KEY: &str = "jobs_idempotency_key";
/// SQLSTATE of a NULL in a NOT NULL column (a model that resolved to nothing).
const NOT_NULL_VIOLATION: &str = "23502";

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
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub request_hash: Option<Vec<u8>>,
    /// The model the provider says answered (set with the reply).
    pub reply_model: Option<String>,
    /// Attempts before the job was last sent back from the dead letters.
    pub earlier_attempts: i32,
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

/// A user turn to record: the message and the job that answers it.
#[derive(Debug, Clone)]
pub struct NewTurn<'a> {
    pub tenant: TenantId,
    pub conversation: ConversationId,
    pub job_id: JobId,
    pub message_id: MessageId,
    pub content: &'a str,
    pub request: &'a JobRequest,
    /// The model the request named; the conversation's, then `default_model`, when it named none.
    pub model: Option<&'a str>,
    pub default_model: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: Option<&'a [u8]>,
    pub deadline_secs: f64,
    pub max_messages: i32,
}

/// What recording a turn did.
#[derive(Debug, Clone)]
pub enum EnqueueOutcome {
    Enqueued {
        seq: i64,
        message_created_at: OffsetDateTime,
        job_created_at: OffsetDateTime,
        deadline_at: OffsetDateTime,
        /// The model the job will use, resolved.
        model: String,
    },
    /// No such conversation for this tenant.
    NotFound,
    /// The conversation holds `max_messages_per_conversation` messages already.
    Full,
    /// A reply is already being generated for this conversation.
    Busy,
    /// The idempotency key was used before; the caller looks the first job up.
    DuplicateKey,
    /// Neither the request, the conversation nor the settings name a model.
    NoModel,
}

/// Records the user message and its job in one statement, so a turn is recorded whole or not at
/// all. Sequence numbers come from the conversation row, which the statement locks.
///
/// # Errors
/// Database errors other than the expected conflicts.
pub async fn enqueue_turn(
    pool: &PgPool,
    turn: &NewTurn<'_>,
) -> Result<EnqueueOutcome, sqlx::Error> {
    let request =
        serde_json::to_value(turn.request).map_err(|err| sqlx::Error::Encode(err.into()))?;
    let result = sqlx::query!(
        r#"WITH conv AS (
               UPDATE conversations
                  SET next_seq = next_seq + 1, message_count = message_count + 1, last_activity_at = now()
                WHERE id = $1 AND tenant_id = $2 AND message_count < $3
            RETURNING id, tenant_id, next_seq - 1 AS seq, model
           ), msg AS (
               INSERT INTO messages (id, conversation_id, tenant_id, seq, role, content, job_id)
               SELECT $4, conv.id, conv.tenant_id, conv.seq, 'user', $5, $6 FROM conv
            RETURNING seq, created_at
           ), job AS (
               INSERT INTO jobs (id, tenant_id, conversation_id, lane, status, request, model,
                                 user_message_id, idempotency_key, request_hash, deadline_at)
               SELECT $6, $2, $1, 'interactive', 'queued', $7, coalesce($8, conv.model, $12), $4, $9, $10,
                      now() + make_interval(secs => $11)
                 FROM msg, conv
            RETURNING created_at, deadline_at, model
           )
           SELECT msg.seq AS "seq!", msg.created_at AS "message_created_at!",
                  job.created_at AS "job_created_at!", job.deadline_at AS "deadline_at!",
                  job.model AS "model!"
             FROM msg, job"#,
        turn.conversation.as_uuid(),
        turn.tenant.as_uuid(),
        turn.max_messages,
        turn.message_id.as_uuid(),
        turn.content,
        turn.job_id.as_uuid(),
        request,
        turn.model,
        turn.idempotency_key,
        turn.request_hash,
        turn.deadline_secs,
        turn.default_model,
    )
    .fetch_optional(pool)
    .await;
    match result {
        Ok(Some(row)) => Ok(EnqueueOutcome::Enqueued {
            seq: row.seq,
            message_created_at: row.message_created_at,
            job_created_at: row.job_created_at,
            deadline_at: row.deadline_at,
            model: row.model,
        }),
        Ok(None) => {
            // Nothing was written. Tell a missing conversation from a full one.
            let exists = sqlx::query_scalar!(
                r#"SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND tenant_id = $2) AS "exists!""#,
                turn.conversation.as_uuid(),
                turn.tenant.as_uuid(),
            )
            .fetch_one(pool)
            .await?;
            Ok(if exists {
                EnqueueOutcome::Full
            } else {
                EnqueueOutcome::NotFound
            })
        }
        Err(err) if super::is_unique_violation(&err, IDEMPOTENCY_KEY) => {
            Ok(EnqueueOutcome::DuplicateKey)
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(NOT_NULL_VIOLATION) => {
            Ok(EnqueueOutcome::NoModel)
        }
        Err(err) if super::is_unique_violation(&err, ONE_ACTIVE_PER_CONVERSATION) => {
            // A retry with the same idempotency key can land here first: report it as a duplicate.
            let replay = match turn.idempotency_key {
                Some(key) => find_by_idempotency_key(pool, turn.tenant, key)
                    .await?
                    .is_some(),
                None => false,
            };
            Ok(if replay {
                EnqueueOutcome::DuplicateKey
            } else {
                EnqueueOutcome::Busy
            })
        }
        Err(err) => Err(err),
    }
}

macro_rules! select_job {
    ($where:literal, $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(
            JobRow,
            r#"SELECT id AS "id: JobId", tenant_id AS "tenant_id: TenantId",
                      conversation_id AS "conversation_id: ConversationId", lane, status, model,
                      user_message_id AS "user_message_id: MessageId", attempts, created_at,
                      started_at, finished_at, deadline_at, queued_ms, ttft_ms, upstream_ms,
                      reply_message_id AS "reply_message_id: MessageId", reply_content,
                      finish_reason, usage, cached, error_type, error_message, request_hash,
                      reply_model, earlier_attempts
                 FROM jobs "# + $where,
            $($arg),+
        )
    };
}

/// A job, if it belongs to the tenant.
///
/// # Errors
/// Database errors.
pub async fn get(
    pool: &PgPool,
    tenant: TenantId,
    id: JobId,
) -> Result<Option<JobRow>, sqlx::Error> {
    select_job!(
        "WHERE id = $1 AND tenant_id = $2",
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
pub async fn get_any(pool: &PgPool, id: JobId) -> Result<Option<JobRow>, sqlx::Error> {
    select_job!("WHERE id = $1", id.as_uuid())
        .fetch_optional(pool)
        .await
}

/// The job first recorded with this idempotency key.
///
/// # Errors
/// Database errors.
pub async fn find_by_idempotency_key(
    pool: &PgPool,
    tenant: TenantId,
    key: &str,
) -> Result<Option<JobRow>, sqlx::Error> {
    select_job!(
        "WHERE tenant_id = $1 AND idempotency_key = $2",
        tenant.as_uuid(),
        key
    )
    .fetch_optional(pool)
    .await
}

/// Notes that JetStream acknowledged these jobs, so the reconciler leaves them alone. Batched:
/// the ingress calls this for many jobs at once.
///
/// # Errors
/// Database errors.
pub async fn mark_published(
    db: impl sqlx::PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
        ids,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A job a worker now owns, with what it needs to build the prompt.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub conversation_id: Option<ConversationId>,
    pub request: Value,
    /// The resolved model; it overrides whatever the stored request says.
    pub model: String,
    pub attempts: i32,
    /// Attempts made before an operator retried the job; event ids count from their sum.
    pub earlier_attempts: i32,
    /// Which copy of the job the queue holds (see [`crate::queue::message_id`]).
    pub publication: i32,
    pub deadline_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub system_prompt: Option<String>,
    /// Sequence number of the user message this turn answers.
    pub user_seq: Option<i64>,
    /// The turn's prompt window, when the claim read it too ([`batch::claim_many`] does; the
    /// worker reads it itself otherwise).
    pub history: Option<Vec<crate::chat::ChatMessage>>,
}

/// Why a delivered job was not claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotClaimed {
    /// No such job (its conversation was deleted): nothing to do.
    Missing,
    /// Finished already: a redelivery after the result was written. Acknowledge, do not call again.
    Finished(JobStatus),
    /// Another worker holds a live claim; try again once its lease could have run out.
    HeldElsewhere { lease_left: std::time::Duration },
    /// A cancel was requested and no live claim holds the job: end it with [`finish_cancelled`].
    CancelRequested,
}

/// Claims a job for one attempt: `running`, attempts + 1, a new claim token and a lease. Only a
/// queued job, or a running one whose lease ran out (its worker died), can be claimed.
///
/// # Errors
/// Database errors.
pub async fn claim(
    pool: &PgPool,
    id: JobId,
    token: Uuid,
    worker: &str,
    lease_secs: f64,
) -> Result<Result<ClaimedJob, NotClaimed>, sqlx::Error> {
    let claimed = sqlx::query!(
        r#"WITH claimed AS (
               UPDATE jobs
                  SET status = 'running', attempts = attempts + 1, claim_token = $2, claimed_by = $3,
                      lease_expires_at = now() + make_interval(secs => $4),
                      started_at = coalesce(started_at, now()),
                      queued_ms = coalesce(queued_ms, (extract(epoch FROM now() - created_at) * 1000)::integer)
                WHERE id = $1 AND cancel_requested_at IS NULL
                  AND (status = 'queued' OR (status = 'running' AND lease_expires_at < now()))
            RETURNING id, tenant_id, conversation_id, request, model, attempts, earlier_attempts,
                      publication, deadline_at, created_at, user_message_id
           )
           SELECT claimed.id AS "id!: JobId", claimed.tenant_id AS "tenant_id!: TenantId",
                  claimed.conversation_id AS "conversation_id?: ConversationId",
                  claimed.request AS "request!", claimed.model AS "model!", claimed.attempts AS "attempts!",
                  claimed.earlier_attempts AS "earlier_attempts!", claimed.publication AS "publication!",
                  claimed.deadline_at AS "deadline_at!", claimed.created_at AS "created_at!",
                  c.system_prompt AS "system_prompt?", m.seq AS "user_seq?"
             FROM claimed
             LEFT JOIN conversations c ON c.id = claimed.conversation_id
             LEFT JOIN messages m ON m.id = claimed.user_message_id"#,
        id.as_uuid(),
        token,
        worker,
        lease_secs,
    )
    .fetch_optional(pool)
    .await?;
    if let Some(row) = claimed {
        return Ok(Ok(ClaimedJob {
            id: row.id,
            tenant_id: row.tenant_id,
            conversation_id: row.conversation_id,
            request: row.request,
            model: row.model,
            attempts: row.attempts,
            earlier_attempts: row.earlier_attempts,
            publication: row.publication,
            deadline_at: row.deadline_at,
            created_at: row.created_at,
            system_prompt: row.system_prompt,
            user_seq: row.user_seq,
            history: None,
        }));
    }
    let current = sqlx::query!(
        r#"SELECT status, cancel_requested_at,
                  greatest(extract(epoch FROM lease_expires_at - now()), 0)::float8 AS "lease_left_secs"
             FROM jobs WHERE id = $1"#,
        id.as_uuid(),
    )
    .fetch_optional(pool)
    .await?;
    let Some(current) = current else {
        return Ok(Err(NotClaimed::Missing));
    };
    let status: JobStatus = current.status.parse().unwrap_or(JobStatus::Failed);
    let lease_left = current.lease_left_secs.unwrap_or(0.0).max(0.0);
    Ok(Err(if status.is_terminal() {
        NotClaimed::Finished(status)
    } else if current.cancel_requested_at.is_some()
        && (status == JobStatus::Queued || lease_left == 0.0)
    {
        NotClaimed::CancelRequested
    } else {
        // A live claim, or (a row that changed between the two statements) none: look again
        // once the lease could have run out.
        NotClaimed::HeldElsewhere {
            lease_left: std::time::Duration::from_secs_f64(lease_left),
        }
    }))
}

/// What a lease renewal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewal {
    /// Jobs whose claim is gone (taken over or finished elsewhere): the worker must abandon them.
    pub lost: Vec<Uuid>,
    /// Jobs still held whose cancel was requested: the worker must stop and end them `cancelled`.
    /// This is how a worker learns of a cancel whose NATS notice it missed.
    pub cancel_requested: Vec<Uuid>,
}

/// Extends the leases of jobs a worker still holds, and reports the ones it must let go.
///
/// # Errors
/// Database errors.
pub async fn renew_leases(
    pool: &PgPool,
    ids: &[Uuid],
    tokens: &[Uuid],
    lease_secs: f64,
) -> Result<Renewal, sqlx::Error> {
    let renewed = sqlx::query!(
        r#"UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3)
             FROM unnest($1::uuid[], $2::uuid[]) AS held(id, token)
            WHERE jobs.id = held.id AND jobs.claim_token = held.token AND jobs.status = 'running'
        RETURNING jobs.id, jobs.cancel_requested_at IS NOT NULL AS "cancel_requested!""#,
        ids,
        tokens,
        lease_secs,
    )
    .fetch_all(pool)
    .await?;
    Ok(Renewal {
        lost: ids
            .iter()
            .copied()
            .filter(|id| !renewed.iter().any(|row| row.id == *id))
            .collect(),
        cancel_requested: renewed
            .iter()
            .filter(|row| row.cancel_requested)
            .map(|row| row.id)
            .collect(),
    })
}

/// The result of a successful attempt.
#[derive(Debug, Clone)]
pub struct Completion<'a> {
    pub id: JobId,
    pub token: Uuid,
    pub reply_message_id: MessageId,
    pub content: &'a str,
    pub finish_reason: &'a str,
    pub usage: Usage,
    pub ttft_ms: Option<i32>,
    pub upstream_ms: i32,
    pub cached: bool,
    /// The model the provider says answered.
    pub reply_model: &'a str,
}

/// Writes the reply message and the job's result in one statement. Returns `false` when the claim
/// was no longer ours (nothing is written then).
///
/// # Errors
/// Database errors.
pub async fn complete(pool: &PgPool, done: &Completion<'_>) -> Result<bool, sqlx::Error> {
    let usage = serde_json::to_value(done.usage).map_err(|err| sqlx::Error::Encode(err.into()))?;
    let written = sqlx::query_scalar!(
        r#"WITH job AS (
               UPDATE jobs
                  SET status = 'succeeded', finished_at = now(), reply_message_id = $3,
                      reply_content = $4, finish_reason = $5, usage = $6, ttft_ms = $7,
                      upstream_ms = $8, cached = $9, reply_model = $10, claim_token = NULL,
                      lease_expires_at = NULL, error_type = NULL, error_message = NULL
                WHERE id = $1 AND claim_token = $2 AND status = 'running'
            RETURNING id, conversation_id
           ), conv AS (
               UPDATE conversations c
                  SET next_seq = next_seq + 1, message_count = message_count + 1, last_activity_at = now()
                 FROM job
                WHERE c.id = job.conversation_id
            RETURNING c.id, c.tenant_id, c.next_seq - 1 AS seq
           ), reply AS (
               INSERT INTO messages (id, conversation_id, tenant_id, seq, role, content, job_id)
               SELECT $3, conv.id, conv.tenant_id, conv.seq, 'assistant', $4, $1 FROM conv
            RETURNING id
           )
           SELECT count(*) AS "written!" FROM job"#,
        done.id.as_uuid(),
        done.token,
        done.reply_message_id.as_uuid(),
        done.content,
        done.finish_reason,
        usage,
        done.ttft_ms,
        done.upstream_ms,
        done.cached,
        done.reply_model,
    )
    .fetch_one(pool)
    .await?;
    Ok(written == 1)
}

/// Hands a job back for another attempt, keeping the error for clients to see meanwhile.
/// `refund_attempt` takes back the attempt this claim counted (a worker that stopped before it
/// could try is not a failed attempt). Returns `false` when the claim was no longer ours.
///
/// # Errors
/// Database errors.
pub async fn release(
    pool: &PgPool,
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

/// Ends a claimed job as `failed`, `cancelled` or `expired`. Returns `false` when the claim was no
/// longer ours.
///
/// # Errors
/// Database errors.
pub async fn finish_unsuccessfully(
    pool: &PgPool,
    id: JobId,
    token: Uuid,
    status: JobStatus,
    error_type: &str,
    error_message: &str,
    upstream_ms: Option<i32>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        r#"UPDATE jobs SET status = $3, finished_at = now(), claim_token = NULL, lease_expires_at = NULL,
                           error_type = $4, error_message = $5, upstream_ms = coalesce($6, upstream_ms)
            WHERE id = $1 AND claim_token = $2 AND status = 'running'"#,
        id.as_uuid(),
        token,
        status.as_str(),
        error_type,
        error_message,
        upstream_ms,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The error message of a job cancelled before or while it ran.
pub const CANCELLED_MESSAGE: &str = "the job was cancelled at the client's request";

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued and is now `cancelled`. `event_attempts` numbers its `job.cancelled`
    /// event ([`crate::events::EventIds::after_attempts`]).
    Cancelled { event_attempts: u32 },
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
    pool: &PgPool,
    tenant: TenantId,
    id: JobId,
) -> Result<CancelOutcome, sqlx::Error> {
    // On the right of SET, `status` is the old value; RETURNING gives the new one.
    let updated = sqlx::query!(
        r#"UPDATE jobs
              SET cancel_requested_at = coalesce(cancel_requested_at, now()),
                  status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
                  finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
                  error_type = CASE WHEN status = 'queued' THEN 'cancelled' ELSE error_type END,
                  error_message = CASE WHEN status = 'queued' THEN $3 ELSE error_message END
            WHERE id = $1 AND tenant_id = $2 AND status IN ('queued', 'running')
        RETURNING status, earlier_attempts + attempts AS "event_attempts!""#,
        id.as_uuid(),
        tenant.as_uuid(),
        CANCELLED_MESSAGE,
    )
    .fetch_optional(pool)
    .await?;
    if let Some(row) = updated {
        return Ok(if row.status == JobStatus::Cancelled.as_str() {
            CancelOutcome::Cancelled {
                event_attempts: u32::try_from(row.event_attempts).unwrap_or(0),
            }
        } else {
            CancelOutcome::Requested
        });
    }
    Ok(match get(pool, tenant, id).await? {
        Some(job) => CancelOutcome::Finished(job.status()),
        None => CancelOutcome::NotFound,
    })
}

/// Ends a job whose cancel was requested and that no live claim holds (it was queued, or its
/// worker died): `cancelled`, without calling the provider. Returns the attempts that number its
/// `job.cancelled` event, or `None` when there was nothing to end (already finished, or held).
///
/// # Errors
/// Database errors.
pub async fn finish_cancelled(pool: &PgPool, id: JobId) -> Result<Option<u32>, sqlx::Error> {
    let attempts = sqlx::query_scalar!(
        r#"UPDATE jobs SET status = 'cancelled', finished_at = now(), claim_token = NULL,
                           lease_expires_at = NULL, error_type = 'cancelled', error_message = $2
            WHERE id = $1 AND cancel_requested_at IS NOT NULL
              AND (status = 'queued' OR (status = 'running' AND lease_expires_at < now()))
        RETURNING earlier_attempts + attempts AS "event_attempts!""#,
        id.as_uuid(),
        CANCELLED_MESSAGE,
    )
    .fetch_optional(pool)
    .await?;
    Ok(attempts.map(|a| u32::try_from(a).unwrap_or(0)))
}

/// Takes back a job the queue refused (full): deletes the job and its user message, so a
/// rejected request leaves nothing behind. Returns whether it was still there to withdraw.
///
/// # Errors
/// Database errors.
pub async fn withdraw(pool: &PgPool, id: JobId) -> Result<bool, sqlx::Error> {
    let withdrawn = sqlx::query_scalar!(
        r#"WITH job AS (
               DELETE FROM jobs WHERE id = $1 AND status = 'queued' AND attempts = 0
            RETURNING conversation_id, user_message_id
           ), msg AS (
               DELETE FROM messages m USING job WHERE m.id = job.user_message_id
            RETURNING m.conversation_id
           ), conv AS (
               UPDATE conversations c SET message_count = message_count - 1
                 FROM msg WHERE c.id = msg.conversation_id
            RETURNING c.id
           )
           SELECT count(*) AS "withdrawn!" FROM job"#,
        id.as_uuid(),
    )
    .fetch_one(pool)
    .await?;
    Ok(withdrawn == 1)
}
