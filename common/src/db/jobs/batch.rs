//! The hot writes of the job life cycle, for many jobs at once: recording turns, claiming jobs,
//! writing replies. Each does for a batch what its single-job counterpart in the parent module
//! does for one job, with the same outcomes, in a fixed number of statements whatever the batch
//! size (see [`crate::batch`] for how concurrent requests are gathered).
//!
//! A batch that fails as a whole (a conflict with a concurrent writer elsewhere, which the batch
//! cannot attribute to one row) is retried job by job by the caller through the single-job path,
//! which sorts out each job's outcome.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{ClaimedJob, Completion, EnqueueOutcome, NewTurn};
use crate::chat::{ChatMessage, Role};
use crate::ids::{ConversationId, JobId, TenantId};

/// Records many turns in one transaction. Outcomes are in the order of `turns`, as
/// [`super::enqueue_turn`] would give them one by one (a later turn for a conversation that an
/// earlier turn of the batch made busy is `Busy`; a repeated idempotency key is `DuplicateKey`).
///
/// # Errors
/// Database errors, including conflicts with writers outside the batch: retry job by job then.
pub async fn enqueue_turns(
    pool: &PgPool,
    turns: &[NewTurn<'_>],
) -> Result<Vec<EnqueueOutcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut conversation_ids: Vec<Uuid> = turns.iter().map(|t| t.conversation.as_uuid()).collect();
    conversation_ids.sort_unstable();
    conversation_ids.dedup();
    // Lock the conversations in id order (so concurrent batches cannot deadlock) and learn what
    // each needs: its owner, model, size, next sequence number and whether a reply is pending.
    let rows = sqlx::query!(
        r#"SELECT c.id, c.tenant_id, c.model, c.message_count, c.next_seq,
                  EXISTS (SELECT 1 FROM jobs j
                           WHERE j.conversation_id = c.id AND j.status IN ('queued', 'running')) AS "busy!"
             FROM conversations c
            WHERE c.id = ANY($1)
            ORDER BY c.id
              FOR UPDATE OF c"#,
        &conversation_ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    struct Conversation {
        tenant: Uuid,
        model: Option<String>,
        message_count: i32,
        next_seq: i64,
        busy: bool,
    }
    let mut conversations: HashMap<Uuid, Conversation> = rows
        .into_iter()
        .map(|row| {
            let conversation = Conversation {
                tenant: row.tenant_id,
                model: row.model,
                message_count: row.message_count,
                next_seq: row.next_seq,
                busy: row.busy,
            };
            (row.id, conversation)
        })
        .collect();

    let keyed: Vec<(Uuid, String)> = turns
        .iter()
        .filter_map(|t| {
            t.idempotency_key
                .map(|key| (t.tenant.as_uuid(), key.to_owned()))
        })
        .collect();
    let mut used_keys: HashSet<(Uuid, String)> = HashSet::new();
    if !keyed.is_empty() {
        let (tenants, keys): (Vec<Uuid>, Vec<String>) = keyed.into_iter().unzip();
        let existing = sqlx::query!(
            r#"SELECT tenant_id, idempotency_key AS "key!" FROM jobs
                WHERE (tenant_id, idempotency_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"#,
            &tenants,
            &keys,
        )
        .fetch_all(&mut *tx)
        .await?;
        used_keys.extend(existing.into_iter().map(|row| (row.tenant_id, row.key)));
    }

    // Decide each turn in order, as if they had come one after another.
    let mut outcomes = Vec::with_capacity(turns.len());
    let mut rows = TurnRows::default();
    for turn in turns {
        let key = turn
            .idempotency_key
            .map(|key| (turn.tenant.as_uuid(), key.to_owned()));
        if key.as_ref().is_some_and(|key| used_keys.contains(key)) {
            outcomes.push(Decision::Done(EnqueueOutcome::DuplicateKey));
            continue;
        }
        let Some(conversation) = conversations
            .get_mut(&turn.conversation.as_uuid())
            .filter(|c| c.tenant == turn.tenant.as_uuid())
        else {
            outcomes.push(Decision::Done(EnqueueOutcome::NotFound));
            continue;
        };
        if conversation.message_count >= turn.max_messages {
            outcomes.push(Decision::Done(EnqueueOutcome::Full));
            continue;
        }
        if conversation.busy {
            outcomes.push(Decision::Done(EnqueueOutcome::Busy));
            continue;
        }
        let model = turn
            .model
            .or(conversation.model.as_deref())
            .or(turn.default_model);
        let Some(model) = model else {
            outcomes.push(Decision::Done(EnqueueOutcome::NoModel));
            continue;
        };
        let request =
            serde_json::to_value(turn.request).map_err(|err| sqlx::Error::Encode(err.into()))?;
        let seq = conversation.next_seq;
        conversation.next_seq += 1;
        conversation.message_count += 1;
        conversation.busy = true;
        if let Some(key) = key {
            used_keys.insert(key);
        }
        rows.push(turn, seq, model, request);
        outcomes.push(Decision::Recorded {
            seq,
            model: model.to_owned(),
            deadline_secs: turn.deadline_secs,
        });
    }

    let now = if rows.job_ids.is_empty() {
        None
    } else {
        let (ids, next_seqs, counts): (Vec<Uuid>, Vec<i64>, Vec<i32>) = conversations
            .iter()
            .filter(|(id, _)| rows.conversations.contains(*id))
            .map(|(id, c)| (*id, c.next_seq, c.message_count))
            .collect();
        let now = sqlx::query_scalar!(
            r#"WITH conv AS (
                   UPDATE conversations c
                      SET next_seq = t.next_seq, message_count = t.message_count, last_activity_at = now()
                     FROM unnest($1::uuid[], $2::bigint[], $3::integer[]) AS t(id, next_seq, message_count)
                    WHERE c.id = t.id
               ), msg AS (
                   INSERT INTO messages (id, conversation_id, tenant_id, seq, role, content, job_id)
                   SELECT t.id, t.conversation_id, t.tenant_id, t.seq, 'user', t.content, t.job_id
                     FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::bigint[], $8::text[], $9::uuid[])
                          AS t(id, conversation_id, tenant_id, seq, content, job_id)
               ), job AS (
                   INSERT INTO jobs (id, tenant_id, conversation_id, lane, status, request, model,
                                     user_message_id, idempotency_key, request_hash, deadline_at)
                   SELECT t.id, t.tenant_id, t.conversation_id, 'interactive', 'queued', t.request, t.model,
                          t.message_id, t.idempotency_key, t.request_hash, now() + make_interval(secs => t.deadline)
                     FROM unnest($9::uuid[], $6::uuid[], $5::uuid[], $10::jsonb[], $11::text[], $4::uuid[],
                                 $12::text[], $13::bytea[], $14::float8[])
                          AS t(id, tenant_id, conversation_id, request, model, message_id,
                               idempotency_key, request_hash, deadline)
               )
               SELECT now() AS "now!""#,
            &ids,
            &next_seqs,
            &counts,
            &rows.message_ids,
            &rows.conversation_ids,
            &rows.tenants,
            &rows.seqs,
            &rows.contents[..],
            &rows.job_ids,
            &rows.requests,
            &rows.models,
            &rows.idempotency_keys[..] as _,
            &rows.request_hashes[..] as _,
            &rows.deadlines,
        )
        .fetch_one(&mut *tx)
        .await?;
        Some(now)
    };
    tx.commit().await?;

    Ok(outcomes
        .into_iter()
        .map(|decision| match (decision, now) {
            (Decision::Done(outcome), _) => outcome,
            (
                Decision::Recorded {
                    seq,
                    model,
                    deadline_secs,
                },
                Some(now),
            ) => EnqueueOutcome::Enqueued {
                seq,
                message_created_at: now,
                job_created_at: now,
                deadline_at: now + time::Duration::seconds_f64(deadline_secs),
                model,
            },
            // Recorded turns always come with a timestamp; keep the types honest anyway.
            (Decision::Recorded { .. }, None) => EnqueueOutcome::NotFound,
        })
        .collect())
}

enum Decision {
    Done(EnqueueOutcome),
    Recorded {
        seq: i64,
        model: String,
        deadline_secs: f64,
    },
}

/// The columns of the turns a batch records, as arrays for `unnest`.
#[derive(Default)]
struct TurnRows {
    conversations: HashSet<Uuid>,
    message_ids: Vec<Uuid>,
    conversation_ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    seqs: Vec<i64>,
    contents: Vec<String>,
    job_ids: Vec<Uuid>,
    requests: Vec<Value>,
    models: Vec<String>,
    idempotency_keys: Vec<Option<String>>,
    request_hashes: Vec<Option<Vec<u8>>>,
    deadlines: Vec<f64>,
}

impl TurnRows {
    fn push(&mut self, turn: &NewTurn<'_>, seq: i64, model: &str, request: Value) {
        self.conversations.insert(turn.conversation.as_uuid());
        self.message_ids.push(turn.message_id.as_uuid());
        self.conversation_ids.push(turn.conversation.as_uuid());
        self.tenants.push(turn.tenant.as_uuid());
        self.seqs.push(seq);
        self.contents.push(turn.content.to_owned());
        self.job_ids.push(turn.job_id.as_uuid());
        self.requests.push(request);
        self.models.push(model.to_owned());
        self.idempotency_keys
            .push(turn.idempotency_key.map(str::to_owned));
        self.request_hashes
            .push(turn.request_hash.map(<[u8]>::to_vec));
        self.deadlines.push(turn.deadline_secs);
    }
}

/// Claims many jobs at once, each with its own token, as [`super::claim`] does one. Returns the
/// jobs it claimed, each with its prompt window when it is a conversation turn (the newest
/// `history_max_messages` messages up to the turn, oldest first). A job it did not claim is left
/// out: the caller asks [`super::claim`] why.
///
/// # Errors
/// Database errors.
pub async fn claim_many(
    pool: &PgPool,
    claims: &[(JobId, Uuid)],
    worker: &str,
    lease_secs: f64,
    history_max_messages: i64,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let (ids, tokens): (Vec<Uuid>, Vec<Uuid>) = claims
        .iter()
        .map(|(id, token)| (id.as_uuid(), *token))
        .unzip();
    let rows = sqlx::query!(
        r#"WITH claimed AS (
               UPDATE jobs
                  SET status = 'running', attempts = attempts + 1, claim_token = t.token, claimed_by = $3,
                      lease_expires_at = now() + make_interval(secs => $4),
                      started_at = coalesce(started_at, now()),
                      queued_ms = coalesce(queued_ms, (extract(epoch FROM now() - created_at) * 1000)::integer)
                 FROM unnest($1::uuid[], $2::uuid[]) AS t(id, token)
                WHERE jobs.id = t.id AND jobs.cancel_requested_at IS NULL
                  AND (jobs.status = 'queued' OR (jobs.status = 'running' AND jobs.lease_expires_at < now()))
            RETURNING jobs.id, jobs.tenant_id, jobs.conversation_id, jobs.request, jobs.model, jobs.attempts,
                      jobs.earlier_attempts, jobs.publication, jobs.deadline_at, jobs.created_at,
                      jobs.user_message_id
           )
           SELECT claimed.id AS "id!: JobId", claimed.tenant_id AS "tenant_id!: TenantId",
                  claimed.conversation_id AS "conversation_id?: ConversationId",
                  claimed.request AS "request!", claimed.model AS "model!", claimed.attempts AS "attempts!",
                  claimed.earlier_attempts AS "earlier_attempts!", claimed.publication AS "publication!",
                  claimed.deadline_at AS "deadline_at!", claimed.created_at AS "created_at!",
                  c.system_prompt AS "system_prompt?", m.seq AS "user_seq?",
                  window_messages.history AS "history?"
             FROM claimed
             LEFT JOIN conversations c ON c.id = claimed.conversation_id
             LEFT JOIN messages m ON m.id = claimed.user_message_id
             LEFT JOIN LATERAL (
                   SELECT json_agg(json_build_object('role', h.role, 'content', h.content) ORDER BY h.seq) AS history
                     FROM (SELECT role, content, seq FROM messages
                            WHERE conversation_id = claimed.conversation_id AND seq <= m.seq
                            ORDER BY seq DESC LIMIT $5) h
             ) window_messages ON claimed.conversation_id IS NOT NULL"#,
        &ids,
        &tokens,
        worker,
        lease_secs,
        history_max_messages,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| ClaimedJob {
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
            history: row.history.map(parse_history),
        })
        .collect())
}

fn parse_history(history: Value) -> Vec<ChatMessage> {
    let Value::Array(items) = history else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let role = Role::from_db(item.get("role")?.as_str()?)?;
            let content = item.get("content")?.as_str()?.to_owned();
            Some(ChatMessage::new(role, content))
        })
        .collect()
}

/// Writes many replies at once, as [`super::complete`] does one. Returns, in order, whether each
/// was written (`false`: the claim was no longer ours, and nothing was written for that job).
///
/// # Errors
/// Database errors.
pub async fn complete_many(
    pool: &PgPool,
    done: &[Completion<'_>],
) -> Result<Vec<bool>, sqlx::Error> {
    let ids: Vec<Uuid> = done.iter().map(|d| d.id.as_uuid()).collect();
    let tokens: Vec<Uuid> = done.iter().map(|d| d.token).collect();
    let reply_ids: Vec<Uuid> = done.iter().map(|d| d.reply_message_id.as_uuid()).collect();
    let contents: Vec<String> = done.iter().map(|d| d.content.to_owned()).collect();
    let finish_reasons: Vec<String> = done.iter().map(|d| d.finish_reason.to_owned()).collect();
    let usages: Vec<Value> = done
        .iter()
        .map(|d| serde_json::to_value(d.usage).unwrap_or(Value::Null))
        .collect();
    let ttfts: Vec<Option<i32>> = done.iter().map(|d| d.ttft_ms).collect();
    let upstreams: Vec<i32> = done.iter().map(|d| d.upstream_ms).collect();
    let cached: Vec<bool> = done.iter().map(|d| d.cached).collect();
    let models: Vec<String> = done.iter().map(|d| d.reply_model.to_owned()).collect();
    let written = sqlx::query_scalar!(
        r#"WITH job AS (
               UPDATE jobs
                  SET status = 'succeeded', finished_at = now(), reply_message_id = t.reply_id,
                      reply_content = t.content, finish_reason = t.finish_reason, usage = t.usage,
                      ttft_ms = t.ttft, upstream_ms = t.upstream, cached = t.cached, reply_model = t.model,
                      claim_token = NULL, lease_expires_at = NULL, error_type = NULL, error_message = NULL
                 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::jsonb[],
                             $7::integer[], $8::integer[], $9::boolean[], $10::text[])
                      AS t(id, token, reply_id, content, finish_reason, usage, ttft, upstream, cached, model)
                WHERE jobs.id = t.id AND jobs.claim_token = t.token AND jobs.status = 'running'
            RETURNING jobs.id, jobs.conversation_id, t.reply_id, t.content
           ), conv AS (
               UPDATE conversations c
                  SET next_seq = next_seq + 1, message_count = message_count + 1, last_activity_at = now()
                 FROM job
                WHERE c.id = job.conversation_id
            RETURNING c.id, c.tenant_id, c.next_seq - 1 AS seq
           ), reply AS (
               INSERT INTO messages (id, conversation_id, tenant_id, seq, role, content, job_id)
               SELECT job.reply_id, conv.id, conv.tenant_id, conv.seq, 'assistant', job.content, job.id
                 FROM job JOIN conv ON conv.id = job.conversation_id
           )
           SELECT id AS "id!" FROM job"#,
        &ids,
        &tokens,
        &reply_ids,
        &contents,
        &finish_reasons,
        &usages,
        &ttfts[..] as _,
        &upstreams,
        &cached,
        &models,
    )
    .fetch_all(pool)
    .await?;
    let written: HashSet<Uuid> = written.into_iter().collect();
    Ok(ids.iter().map(|id| written.contains(id)).collect())
}

/// A turn to record, owning its data, so it can wait in a batch.
#[derive(Debug, Clone)]
pub struct OwnedTurn {
    pub tenant: TenantId,
    pub conversation: ConversationId,
    pub job_id: JobId,
    pub message_id: crate::ids::MessageId,
    pub content: String,
    pub request: crate::job::JobRequest,
    pub model: Option<String>,
    pub default_model: Option<std::sync::Arc<str>>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<Vec<u8>>,
    pub deadline_secs: f64,
    pub max_messages: i32,
}

impl OwnedTurn {
    pub fn as_new_turn(&self) -> NewTurn<'_> {
        NewTurn {
            tenant: self.tenant,
            conversation: self.conversation,
            job_id: self.job_id,
            message_id: self.message_id,
            content: &self.content,
            request: &self.request,
            model: self.model.as_deref(),
            default_model: self.default_model.as_deref(),
            idempotency_key: self.idempotency_key.as_deref(),
            request_hash: self.request_hash.as_deref(),
            deadline_secs: self.deadline_secs,
            max_messages: self.max_messages,
        }
    }
}

/// Records turns gathered by a batcher: one transaction for all of them, or, when that fails as
/// a whole, one by one so each gets its own outcome.
pub async fn record_turns(
    pool: &PgPool,
    turns: Vec<OwnedTurn>,
) -> Vec<Result<EnqueueOutcome, sqlx::Error>> {
    let borrowed: Vec<NewTurn<'_>> = turns.iter().map(OwnedTurn::as_new_turn).collect();
    if borrowed.len() > 1 {
        match enqueue_turns(pool, &borrowed).await {
            Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
            Err(err) => {
                tracing::debug!(error = %err, turns = borrowed.len(), "batch of turns failed; recording them one by one")
            }
        }
    }
    let mut outcomes = Vec::with_capacity(borrowed.len());
    for turn in &borrowed {
        outcomes.push(super::enqueue_turn(pool, turn).await);
    }
    outcomes
}
