//! Claiming jobs: a worker owns a job while its claim token is on the row and its lease lasts.
//! Claims are made before the provider is called, for many jobs at once, and renewed by the
//! worker's heartbeat.

use std::collections::HashMap;
use std::time::Duration;

use crate::db::Db;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::chat::{ChatMessage, Role};
use crate::db::quotas;
use crate::ids::{ConversationId, JobId, TenantId};
use crate::job::JobStatus;

/// A job a worker now owns, with what it needs to build the prompt.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub conversation_id: Option<ConversationId>,
    pub lane: String,
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
    /// The turn's prompt window as read: the newest `history_max_messages` messages after the
    /// claim's `known_seq`, up to and including the user message, oldest first, with their
    /// sequence numbers (empty for a chat completion).
    pub history: Vec<(i64, ChatMessage)>,
    /// The conversation's oldest message now, when the claim named a `known_seq`: a worker that
    /// kept messages from before can tell whether they are still there (a cleared history is not).
    pub first_seq: Option<i64>,
}

/// One job to claim: its id, the token the claim will hold, and the sequence number up to which
/// the claimer already holds the conversation's window (0: none), so only newer messages are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest {
    pub id: JobId,
    pub token: Uuid,
    pub known_seq: i64,
}

/// Why a delivered job was not claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotClaimed {
    /// No such job (its conversation was deleted): nothing to do.
    Missing,
    /// Finished already: a redelivery after the result was written. Acknowledge, do not call again.
    Finished(JobStatus),
    /// Another claim holds it (another worker, or another delivery of the same job in the same
    /// batch); try again once its lease could have run out.
    HeldElsewhere { lease_left: Duration },
    /// A cancel was requested and no live claim holds the job: end it with
    /// [`super::finish_cancelled`].
    CancelRequested,
    /// Its tenant runs as many interactive jobs as its `jobs_in_flight` quota allows: the job
    /// stays queued, and no attempt was counted.
    TenantAtQuota,
}

/// Claims jobs for one attempt each: `running`, attempts + 1, the given claim token and a lease of
/// `lease_secs`. Only a queued job, or a running one whose lease ran out (its worker died), can be
/// claimed. Results are in the order of `claims`: the claimed job with its prompt window, or why it
/// was not claimed. When the same job is asked for twice (two deliveries of it in one batch),
/// exactly one of them gets it.
///
/// A queued interactive job is claimed only while its tenant runs fewer interactive jobs than its
/// `jobs_in_flight` quota (`max_in_flight` from the settings, or the tenant's override; `None` is
/// unlimited), counting the jobs of the same tenant earlier in `claims`. Claims of one tenant's
/// jobs take turns on the tenant's in-flight lock ([`quotas::lock_in_flight`]), and the claim
/// reads the count after it, so the quota holds however many workers claim at once; a claim waits
/// for no recording or finish.
///
/// # Errors
/// Database errors.
pub async fn claim(
    pool: &Db,
    claims: &[ClaimRequest],
    worker: &str,
    lease_secs: f64,
    history_max_messages: i64,
    max_in_flight: Option<u32>,
) -> Result<Vec<Result<ClaimedJob, NotClaimed>>, sqlx::Error> {
    let ids: Vec<Uuid> = claims.iter().map(|c| c.id.as_uuid()).collect();
    let tokens: Vec<Uuid> = claims.iter().map(|c| c.token).collect();
    let known: Vec<i64> = claims.iter().map(|c| c.known_seq).collect();
    let mut tx = pool.begin().await?;
    quotas::lock_in_flight(&mut tx, &ids, max_in_flight).await?;
    // One row per job (the first token asked for it), so the winning token is known.
    let rows = sqlx::query!(
        r#"WITH wanted AS (
               SELECT DISTINCT ON (t.id) t.id, t.token, t.known, t.n
                 FROM unnest($1::uuid[], $2::uuid[], $7::int8[]) WITH ORDINALITY AS t(id, token, known, n)
                ORDER BY t.id, t.n
           ), claimable AS (
               -- The jobs, in id order (`wanted`'s); the usage trigger then locks their tenants'
               -- usage rows, in key order, as it does for every writer of jobs, so claims cannot
               -- deadlock with finishes.
               -- Each job is looked up by its key, one at a time: written as a filter on the
               -- status, the planner may instead read every queued job through the partial
               -- indexes on status when the table's statistics are stale (seen: 8,500 queued jobs
               -- read for each claim, 20 of its 27 ms, after a flood on a table not analysed yet).
               -- Locking re-checks the conditions on the latest version of each row.
               SELECT j.id, j.tenant_id, j.lane, j.status
                 FROM wanted w
                CROSS JOIN LATERAL (
                      SELECT id, tenant_id, lane, status FROM jobs
                       WHERE jobs.id = w.id AND cancel_requested_at IS NULL
                         AND (status = 'queued' OR (status = 'running' AND lease_expires_at < now()))
                         FOR UPDATE) j
           ), usage AS (
               -- Read, not locked, after the tenant's in-flight lock: what earlier claims
               -- started is counted, and no writer of the usage rows is waited for.
               SELECT t.tenant_id, coalesce(sum(u.jobs_in_flight), 0) AS jobs_in_flight,
                      chatq_quota(q.jobs_in_flight, $6) AS quota
                 FROM (SELECT DISTINCT tenant_id FROM claimable WHERE lane = 'interactive' AND status = 'queued') t
                 LEFT JOIN tenant_usage u ON u.tenant_id = t.tenant_id
                 LEFT JOIN tenant_quotas q ON q.tenant_id = t.tenant_id
                GROUP BY t.tenant_id, q.jobs_in_flight
           ), over_quota AS (
               -- Queued interactive jobs, numbered per tenant: each takes one of its tenant's places.
               SELECT s.id FROM (
                   SELECT c.id, c.tenant_id, row_number() OVER (PARTITION BY c.tenant_id ORDER BY w.n) AS nth
                     FROM claimable c JOIN wanted w ON w.id = c.id
                    WHERE c.lane = 'interactive' AND c.status = 'queued'
               ) s JOIN usage u ON u.tenant_id = s.tenant_id
                WHERE u.jobs_in_flight + s.nth > u.quota
           ), claimed AS (
               UPDATE jobs
                  SET status = 'running', attempts = attempts + 1, claim_token = wanted.token, claimed_by = $3,
                      lease_expires_at = now() + make_interval(secs => $4),
                      started_at = coalesce(started_at, now()),
                      queued_ms = coalesce(queued_ms, (extract(epoch FROM now() - created_at) * 1000)::integer)
                 FROM wanted
                -- `claimable` holds these rows locked, as they are now: nothing to check again
                -- (and no status condition to lead the planner to the partial indexes). The ids
                -- are one array, so the rows are found by key: as `IN (SELECT …)`, the planner
                -- hashed it and read the whole table when its statistics were stale (seen: every
                -- one of 11,000 jobs read, 6 of a claim's 12 ms).
                WHERE jobs.id = wanted.id
                  AND jobs.id = ANY (ARRAY(SELECT id FROM claimable WHERE id NOT IN (SELECT id FROM over_quota)))
            RETURNING jobs.id, jobs.tenant_id, jobs.conversation_id, jobs.lane, jobs.request, jobs.model,
                      jobs.attempts, jobs.earlier_attempts, jobs.publication, jobs.deadline_at,
                      jobs.created_at, jobs.user_message_id, jobs.claim_token
           )
           SELECT claimed.id AS "id!: JobId", claimed.tenant_id AS "tenant_id!: TenantId",
                  claimed.conversation_id AS "conversation_id?: ConversationId", claimed.lane AS "lane!",
                  claimed.request AS "request!", claimed.model AS "model!", claimed.attempts AS "attempts!",
                  claimed.earlier_attempts AS "earlier_attempts!", claimed.publication AS "publication!",
                  claimed.deadline_at AS "deadline_at!", claimed.created_at AS "created_at!",
                  claimed.claim_token AS "claim_token!",
                  c.system_prompt AS "system_prompt?", m.seq AS "user_seq?",
                  window_messages.history AS "history?",
                  CASE WHEN w.known > 0 THEN
                       (SELECT min(seq) FROM messages WHERE conversation_id = claimed.conversation_id)
                  END AS "first_seq?"
             FROM claimed
             JOIN wanted w ON w.id = claimed.id
             LEFT JOIN conversations c ON c.id = claimed.conversation_id
             LEFT JOIN messages m ON m.id = claimed.user_message_id
             LEFT JOIN LATERAL (
                   SELECT json_agg(json_build_object('seq', h.seq, 'role', h.role, 'content', h.content) ORDER BY h.seq) AS history
                     FROM (SELECT role, content, seq FROM messages
                            WHERE conversation_id = claimed.conversation_id AND seq <= m.seq AND seq > w.known
                            ORDER BY seq DESC LIMIT $5) h
             ) window_messages ON claimed.conversation_id IS NOT NULL"#,
        &ids,
        &tokens,
        worker,
        lease_secs,
        history_max_messages,
        quotas::stored_setting(max_in_flight),
        &known,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut claimed: HashMap<(Uuid, Uuid), ClaimedJob> = rows
        .into_iter()
        .map(|row| {
            let job = ClaimedJob {
                id: row.id,
                tenant_id: row.tenant_id,
                conversation_id: row.conversation_id,
                lane: row.lane,
                request: row.request,
                model: row.model,
                attempts: row.attempts,
                earlier_attempts: row.earlier_attempts,
                publication: row.publication,
                deadline_at: row.deadline_at,
                created_at: row.created_at,
                system_prompt: row.system_prompt,
                user_seq: row.user_seq,
                history: row.history.map(parse_history).unwrap_or_default(),
                first_seq: row.first_seq,
            };
            ((row.id.as_uuid(), row.claim_token), job)
        })
        .collect();
    let unclaimed: Vec<Uuid> = claims
        .iter()
        .filter(|c| !claimed.contains_key(&(c.id.as_uuid(), c.token)))
        .map(|c| c.id.as_uuid())
        .collect();
    let reasons = if unclaimed.is_empty() {
        HashMap::new()
    } else {
        why_not_claimed(pool, &unclaimed).await?
    };
    Ok(claims
        .iter()
        .map(|c| match claimed.remove(&(c.id.as_uuid(), c.token)) {
            Some(job) => Ok(job),
            None => Err(reasons
                .get(&c.id.as_uuid())
                .copied()
                .unwrap_or(NotClaimed::Missing)),
        })
        .collect())
}

/// Why each of these jobs was not claimed, read after the claim.
async fn why_not_claimed(
    pool: &Db,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, NotClaimed>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT id, status, cancel_requested_at IS NOT NULL AS "cancel_requested!",
                  greatest(extract(epoch FROM lease_expires_at - now()), 0)::float8 AS "lease_left_secs"
             FROM jobs WHERE id = ANY($1)"#,
        ids,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let status: JobStatus = row.status.parse().unwrap_or(JobStatus::Failed);
            let lease_left = row.lease_left_secs.unwrap_or(0.0).max(0.0);
            let reason = if status.is_terminal() {
                NotClaimed::Finished(status)
            } else if row.cancel_requested && (status == JobStatus::Queued || lease_left == 0.0) {
                NotClaimed::CancelRequested
            } else if status == JobStatus::Queued {
                // Queued, not cancelled, and not claimed: its tenant is at its quota.
                NotClaimed::TenantAtQuota
            } else {
                // A live claim, or (a row that changed between the two statements) none: look
                // again once the lease could have run out.
                NotClaimed::HeldElsewhere {
                    lease_left: Duration::from_secs_f64(lease_left),
                }
            };
            (row.id, reason)
        })
        .collect())
}

fn parse_history(history: Value) -> Vec<(i64, ChatMessage)> {
    let Value::Array(items) = history else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let seq = item.get("seq")?.as_i64()?;
            let role = Role::from_db(item.get("role")?.as_str()?)?;
            let content = item.get("content")?.as_str()?.to_owned();
            Some((seq, ChatMessage::new(role, content)))
        })
        .collect()
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
    pool: &Db,
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
