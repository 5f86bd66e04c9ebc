//! Recording jobs: the one write path every request that creates a job takes (a conversation
//! turn, a chat completion), for many requests at once.
//!
//! [`record`] records a batch in one transaction and decides each job as if the requests had come
//! one after another: a later turn for a conversation an earlier turn of the batch made busy is
//! [`Recorded::Busy`], a repeated idempotency key is [`Recorded::DuplicateKey`]. The statements are
//! the same for one job or a thousand (see [`crate::batch`] for how concurrent requests are
//! gathered).
//!
//! A batch that fails as a whole (a conflict with a writer outside it, or a commit whose
//! acknowledgement was lost) is recorded again job by job by [`record_gathered`], which first looks
//! for jobs the failed attempt may have recorded after all, so a client always gets the job it
//! created, never an error for a job that will be answered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::{ConversationId, JobId, MessageId, TenantId};
use crate::job::{JobRequest, Lane};
use crate::trace::TraceContext;

/// A job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub tenant: TenantId,
    pub lane: Lane,
    pub request: JobRequest,
    /// The model the request named; when it names none, the conversation's, then `default_model`.
    pub model: Option<String>,
    pub default_model: Option<Arc<str>>,
    pub idempotency: Option<Idempotency>,
    /// Seconds from now until the job ends `expired` if it has not finished.
    pub deadline_secs: f64,
    /// For a conversation turn: the user message recorded with the job.
    pub turn: Option<NewTurnMessage>,
    /// The trace of the request that created the job, published with every copy of it.
    pub trace: Option<TraceContext>,
}

/// An `Idempotency-Key` and what it stands for.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the request, so reusing the key for another request is refused.
    pub request_hash: Vec<u8>,
}

/// The user message of a conversation turn.
#[derive(Debug, Clone)]
pub struct NewTurnMessage {
    pub conversation: ConversationId,
    pub message_id: MessageId,
    pub content: String,
    /// `max_messages_per_conversation`: a conversation this full refuses the turn.
    pub max_messages: i32,
}

/// A recorded job, as the request that created it is answered.
#[derive(Debug, Clone)]
pub struct RecordedJob {
    /// The user message's sequence number (turns only).
    pub seq: Option<i64>,
    /// When the job (and its message) were recorded.
    pub created_at: OffsetDateTime,
    pub deadline_at: OffsetDateTime,
    /// The model the job will use, resolved.
    pub model: String,
}

/// What recording one job did.
#[derive(Debug, Clone)]
pub enum Recorded {
    Enqueued(RecordedJob),
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

/// Records a batch gathered from concurrent requests: one transaction for all of them, or, when
/// that fails as a whole, one by one (each first checking whether the failed batch recorded it).
pub async fn record_gathered(
    pool: &PgPool,
    jobs: Vec<NewJob>,
) -> Vec<Result<Recorded, sqlx::Error>> {
    let recorded = record_in(pool, &jobs, false).await;
    #[cfg(feature = "fault-injection")]
    let recorded = recorded.and_then(|outcomes| {
        if crate::fault::record_ack_lost() {
            tracing::error!("CHATQ_FAULT_LOSE_RECORD_ACK: taking a committed batch as failed");
            return Err(sqlx::Error::Protocol(
                "fault injection: acknowledgement lost".into(),
            ));
        }
        Ok(outcomes)
    });
    match recorded {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(err) => {
            tracing::debug!(error = %err, jobs = jobs.len(), "a batch of jobs failed; recording them one by one");
            let mut outcomes = Vec::with_capacity(jobs.len());
            for job in &jobs {
                outcomes.push(record_again(pool, job).await);
            }
            outcomes
        }
    }
}

/// Records one job of a batch that failed as a whole: if the batch's commit took effect after
/// all (only its acknowledgement was lost), the job as it was recorded then; otherwise the job
/// recorded now.
///
/// # Errors
/// Database errors.
pub async fn record_again(pool: &PgPool, job: &NewJob) -> Result<Recorded, sqlx::Error> {
    let mut outcome = record_in(pool, std::slice::from_ref(job), true).await?;
    Ok(outcome.pop().unwrap_or(Recorded::NotFound))
}

/// Records jobs in one transaction; outcomes are in the order of `jobs`.
///
/// # Errors
/// Database errors, including conflicts with writers outside the batch.
pub async fn record(pool: &PgPool, jobs: &[NewJob]) -> Result<Vec<Recorded>, sqlx::Error> {
    record_in(pool, jobs, false).await
}

/// A conversation, locked for the batch, as the batch changes it.
struct Conversation {
    tenant: Uuid,
    model: Option<String>,
    message_count: i32,
    next_seq: i64,
    busy: bool,
    touched: bool,
}

async fn record_in(
    pool: &PgPool,
    jobs: &[NewJob],
    look_for_recorded: bool,
) -> Result<Vec<Recorded>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let recorded = if look_for_recorded {
        already_recorded(&mut tx, jobs).await?
    } else {
        HashMap::new()
    };
    let mut conversations = lock_conversations(&mut tx, jobs).await?;
    let mut used_keys = used_keys(&mut tx, jobs).await?;

    // Decide each job in order, as if the requests had come one after another.
    let mut decisions = Vec::with_capacity(jobs.len());
    let mut rows = Rows::default();
    for job in jobs {
        if let Some(stored) = recorded.get(&job.id.as_uuid()) {
            decisions.push(Decision::Done(Recorded::Enqueued(stored.clone())));
            continue;
        }
        let key = job
            .idempotency
            .as_ref()
            .map(|i| (job.tenant.as_uuid(), i.key.clone()));
        if key.as_ref().is_some_and(|key| used_keys.contains(key)) {
            decisions.push(Decision::Done(Recorded::DuplicateKey));
            continue;
        }
        let decided = match &job.turn {
            Some(turn) => decide_turn(job, turn, &mut conversations),
            None => job
                .model
                .as_deref()
                .or(job.default_model.as_deref())
                .map(|model| (None, model.to_owned()))
                .ok_or(Recorded::NoModel),
        };
        let (seq, model) = match decided {
            Ok(decided) => decided,
            Err(refused) => {
                decisions.push(Decision::Done(refused));
                continue;
            }
        };
        if let Some(key) = key {
            used_keys.insert(key);
        }
        rows.push(job, seq, &model)?;
        decisions.push(Decision::Recorded {
            seq,
            model,
            deadline_secs: job.deadline_secs,
        });
    }

    let now = if rows.ids.is_empty() {
        None
    } else {
        Some(rows.insert(&mut tx, &conversations).await?)
    };
    tx.commit().await?;

    Ok(decisions
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
            ) => Recorded::Enqueued(RecordedJob {
                seq,
                created_at: now,
                deadline_at: now + time::Duration::seconds_f64(deadline_secs),
                model,
            }),
            // Recorded jobs always come with a timestamp; keep the types honest anyway.
            (Decision::Recorded { .. }, None) => Recorded::NotFound,
        })
        .collect())
}

/// Decides a turn against its (locked) conversation; on success, the message's sequence number
/// and the resolved model, and the conversation is busy from then on.
fn decide_turn(
    job: &NewJob,
    turn: &NewTurnMessage,
    conversations: &mut HashMap<Uuid, Conversation>,
) -> Result<(Option<i64>, String), Recorded> {
    let conversation = conversations
        .get_mut(&turn.conversation.as_uuid())
        .filter(|c| c.tenant == job.tenant.as_uuid())
        .ok_or(Recorded::NotFound)?;
    if conversation.message_count >= turn.max_messages {
        return Err(Recorded::Full);
    }
    if conversation.busy {
        return Err(Recorded::Busy);
    }
    let model = job
        .model
        .as_deref()
        .or(conversation.model.as_deref())
        .or(job.default_model.as_deref())
        .ok_or(Recorded::NoModel)?
        .to_owned();
    let seq = conversation.next_seq;
    conversation.next_seq += 1;
    conversation.message_count += 1;
    conversation.busy = true;
    conversation.touched = true;
    Ok((Some(seq), model))
}

enum Decision {
    Done(Recorded),
    Recorded {
        seq: Option<i64>,
        model: String,
        deadline_secs: f64,
    },
}

/// Jobs of this batch that are recorded already (an earlier attempt at the batch committed, but
/// its acknowledgement was lost).
async fn already_recorded(
    tx: &mut sqlx::PgConnection,
    jobs: &[NewJob],
) -> Result<HashMap<Uuid, RecordedJob>, sqlx::Error> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id.as_uuid()).collect();
    let rows = sqlx::query!(
        r#"SELECT j.id AS "id!", j.created_at AS "created_at!", j.deadline_at AS "deadline_at!",
                  j.model AS "model!", m.seq AS "seq?"
             FROM jobs j LEFT JOIN messages m ON m.id = j.user_message_id
            WHERE j.id = ANY($1)"#,
        &ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let job = RecordedJob {
                seq: row.seq,
                created_at: row.created_at,
                deadline_at: row.deadline_at,
                model: row.model,
            };
            (row.id, job)
        })
        .collect())
}

/// Locks the conversations the batch's turns name, in id order (so concurrent batches cannot
/// deadlock), and reads what deciding needs: owner, model, size, next sequence number and
/// whether a reply is pending.
async fn lock_conversations(
    tx: &mut sqlx::PgConnection,
    jobs: &[NewJob],
) -> Result<HashMap<Uuid, Conversation>, sqlx::Error> {
    let mut ids: Vec<Uuid> = jobs
        .iter()
        .filter_map(|j| j.turn.as_ref().map(|t| t.conversation.as_uuid()))
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query!(
        r#"SELECT c.id, c.tenant_id, c.model, c.message_count, c.next_seq,
                  EXISTS (SELECT 1 FROM jobs j
                           WHERE j.conversation_id = c.id AND j.status IN ('queued', 'running')) AS "busy!"
             FROM conversations c
            WHERE c.id = ANY($1)
            ORDER BY c.id
              FOR UPDATE OF c"#,
        &ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let conversation = Conversation {
                tenant: row.tenant_id,
                model: row.model,
                message_count: row.message_count,
                next_seq: row.next_seq,
                busy: row.busy,
                touched: false,
            };
            (row.id, conversation)
        })
        .collect())
}

/// The (tenant, idempotency key) pairs of the batch that earlier jobs used already.
async fn used_keys(
    tx: &mut sqlx::PgConnection,
    jobs: &[NewJob],
) -> Result<HashSet<(Uuid, String)>, sqlx::Error> {
    let (tenants, keys): (Vec<Uuid>, Vec<String>) = jobs
        .iter()
        .filter_map(|j| {
            j.idempotency
                .as_ref()
                .map(|i| (j.tenant.as_uuid(), i.key.clone()))
        })
        .unzip();
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = sqlx::query!(
        r#"SELECT tenant_id, idempotency_key AS "key!" FROM jobs
            WHERE (tenant_id, idempotency_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"#,
        &tenants,
        &keys,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.tenant_id, row.key))
        .collect())
}

/// The columns of the jobs (and turn messages) a batch records, as arrays for `unnest`.
#[derive(Default)]
struct Rows {
    // Jobs.
    ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    conversations: Vec<Option<Uuid>>,
    lanes: Vec<String>,
    requests: Vec<Value>,
    models: Vec<String>,
    message_ids: Vec<Option<Uuid>>,
    idempotency_keys: Vec<Option<String>>,
    request_hashes: Vec<Option<Vec<u8>>>,
    deadlines: Vec<f64>,
    traceparents: Vec<Option<String>>,
    // The user messages of turns.
    turn_message_ids: Vec<Uuid>,
    turn_conversations: Vec<Uuid>,
    turn_tenants: Vec<Uuid>,
    turn_seqs: Vec<i64>,
    turn_contents: Vec<String>,
    turn_job_ids: Vec<Uuid>,
}

impl Rows {
    fn push(&mut self, job: &NewJob, seq: Option<i64>, model: &str) -> Result<(), sqlx::Error> {
        let request =
            serde_json::to_value(&job.request).map_err(|err| sqlx::Error::Encode(err.into()))?;
        self.ids.push(job.id.as_uuid());
        self.tenants.push(job.tenant.as_uuid());
        self.conversations
            .push(job.turn.as_ref().map(|t| t.conversation.as_uuid()));
        self.lanes.push(job.lane.as_str().to_owned());
        self.requests.push(request);
        self.models.push(model.to_owned());
        self.message_ids
            .push(job.turn.as_ref().map(|t| t.message_id.as_uuid()));
        self.idempotency_keys
            .push(job.idempotency.as_ref().map(|i| i.key.clone()));
        self.request_hashes
            .push(job.idempotency.as_ref().map(|i| i.request_hash.clone()));
        self.deadlines.push(job.deadline_secs);
        self.traceparents
            .push(job.trace.as_ref().map(TraceContext::to_string));
        if let (Some(turn), Some(seq)) = (&job.turn, seq) {
            self.turn_message_ids.push(turn.message_id.as_uuid());
            self.turn_conversations.push(turn.conversation.as_uuid());
            self.turn_tenants.push(job.tenant.as_uuid());
            self.turn_seqs.push(seq);
            self.turn_contents.push(turn.content.clone());
            self.turn_job_ids.push(job.id.as_uuid());
        }
        Ok(())
    }

    /// Writes the rows: the conversations' new counters, the turns' messages and the jobs, in
    /// one statement. Returns the time they were recorded at.
    async fn insert(
        &self,
        tx: &mut sqlx::PgConnection,
        conversations: &HashMap<Uuid, Conversation>,
    ) -> Result<OffsetDateTime, sqlx::Error> {
        let (conversation_ids, next_seqs, counts): (Vec<Uuid>, Vec<i64>, Vec<i32>) = conversations
            .iter()
            .filter(|(_, c)| c.touched)
            .map(|(id, c)| (*id, c.next_seq, c.message_count))
            .collect();
        sqlx::query_scalar!(
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
                                     user_message_id, idempotency_key, request_hash, deadline_at,
                                     traceparent)
                   SELECT t.id, t.tenant_id, t.conversation_id, t.lane, 'queued', t.request, t.model,
                          t.message_id, t.idempotency_key, t.request_hash,
                          now() + make_interval(secs => t.deadline), t.traceparent
                     FROM unnest($10::uuid[], $11::uuid[], $12::uuid[], $13::text[], $14::jsonb[],
                                 $15::text[], $16::uuid[], $17::text[], $18::bytea[], $19::float8[],
                                 $20::text[])
                          AS t(id, tenant_id, conversation_id, lane, request, model, message_id,
                               idempotency_key, request_hash, deadline, traceparent)
               )
               SELECT now() AS "now!""#,
            &conversation_ids,
            &next_seqs,
            &counts,
            &self.turn_message_ids,
            &self.turn_conversations,
            &self.turn_tenants,
            &self.turn_seqs,
            &self.turn_contents[..],
            &self.turn_job_ids,
            &self.ids,
            &self.tenants,
            &self.conversations[..] as _,
            &self.lanes[..],
            &self.requests,
            &self.models[..],
            &self.message_ids[..] as _,
            &self.idempotency_keys[..] as _,
            &self.request_hashes[..] as _,
            &self.deadlines,
            &self.traceparents[..] as _,
        )
        .fetch_one(&mut *tx)
        .await
    }
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
