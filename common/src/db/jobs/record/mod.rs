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

mod lookups;
mod queued;
mod rows;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::db::Db;
use time::OffsetDateTime;
use uuid::Uuid;

use self::lookups::{already_recorded, lock_conversations, used_keys};
use self::queued::QueuedQuotas;
use self::rows::Rows;
use crate::db::quotas::OverQuota;

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
    /// The tenant's queued-jobs quota from the settings (`tenant_max_queued_jobs`; `None` is
    /// unlimited); a `tenant_quotas` override wins. Interactive jobs only.
    pub max_queued: Option<u32>,
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
    /// Interactive jobs of the same tenant that were queued when this one was recorded: the
    /// ingress queues a job behind other tenants' when this is beyond the tenant's fair share
    /// (see `chatq_common::queue::Placement`). 0 for a job found recorded already.
    pub queued_ahead: i32,
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
    /// The tenant has as many interactive jobs queued as its quota allows.
    OverQuota(OverQuota),
}

/// Records a batch gathered from concurrent requests: one transaction for all of them, or, when
/// that fails as a whole, one by one (each first checking whether the failed batch recorded it).
pub async fn record_gathered(pool: &Db, jobs: Vec<NewJob>) -> Vec<Result<Recorded, sqlx::Error>> {
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
pub async fn record_again(pool: &Db, job: &NewJob) -> Result<Recorded, sqlx::Error> {
    let mut outcome = record_in(pool, std::slice::from_ref(job), true).await?;
    Ok(outcome.pop().unwrap_or(Recorded::NotFound))
}

/// Records jobs in one transaction; outcomes are in the order of `jobs`.
///
/// # Errors
/// Database errors, including conflicts with writers outside the batch.
pub async fn record(pool: &Db, jobs: &[NewJob]) -> Result<Vec<Recorded>, sqlx::Error> {
    record_in(pool, jobs, false).await
}

/// A conversation, locked for the batch, as the batch changes it.
pub(super) struct Conversation {
    pub(super) tenant: Uuid,
    pub(super) model: Option<String>,
    pub(super) message_count: i32,
    pub(super) next_seq: i64,
    pub(super) busy: bool,
    pub(super) touched: bool,
}

async fn record_in(
    pool: &Db,
    jobs: &[NewJob],
    look_for_recorded: bool,
) -> Result<Vec<Recorded>, sqlx::Error> {
    // Each new attempt holds more tenants' queued-jobs locks exclusively, so this ends.
    let mut exclusive = HashSet::new();
    loop {
        match record_once(pool, jobs, look_for_recorded, &exclusive).await? {
            Attempt::Recorded(outcomes) => return Ok(outcomes),
            Attempt::NearQuota(tenants) => exclusive.extend(tenants),
        }
    }
}

/// What one attempt at recording a batch did.
enum Attempt {
    Recorded(Vec<Recorded>),
    /// Nothing: these tenants, held shared, are too near their queued-jobs quota for that.
    NearQuota(Vec<TenantId>),
}

async fn record_once(
    pool: &Db,
    jobs: &[NewJob],
    look_for_recorded: bool,
    exclusive: &HashSet<TenantId>,
) -> Result<Attempt, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let recorded = if look_for_recorded {
        already_recorded(&mut tx, jobs).await?
    } else {
        HashMap::new()
    };
    let mut conversations = lock_conversations(&mut tx, jobs).await?;
    let mut used_keys = used_keys(&mut tx, jobs).await?;
    let mut queued = match QueuedQuotas::lock(&mut tx, jobs, exclusive).await? {
        Ok(queued) => queued,
        Err(near) => return Ok(Attempt::NearQuota(near)),
    };

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
        if let Err(over) = queued.check(job) {
            decisions.push(Decision::Done(Recorded::OverQuota(over)));
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
        let queued_ahead = queued.count(job);
        rows.push(job, seq, &model)?;
        decisions.push(Decision::Recorded {
            seq,
            model,
            deadline_secs: job.deadline_secs,
            queued_ahead,
        });
    }

    let now = if rows.is_empty() {
        None
    } else {
        Some(rows.insert(&mut tx, &conversations).await?)
    };
    tx.commit().await?;

    Ok(Attempt::Recorded(
        decisions
            .into_iter()
            .map(|decision| match (decision, now) {
                (Decision::Done(outcome), _) => outcome,
                (
                    Decision::Recorded {
                        seq,
                        model,
                        deadline_secs,
                        queued_ahead,
                    },
                    Some(now),
                ) => Recorded::Enqueued(RecordedJob {
                    seq,
                    created_at: now,
                    deadline_at: now + time::Duration::seconds_f64(deadline_secs),
                    model,
                    queued_ahead,
                }),
                // Recorded jobs always come with a timestamp; keep the types honest anyway.
                (Decision::Recorded { .. }, None) => Recorded::NotFound,
            })
            .collect(),
    ))
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
        queued_ahead: i32,
    },
}

/// Takes back a job the queue refused (full): deletes the job and its user message, so a
/// rejected request leaves nothing behind. Returns whether it was still there to withdraw.
///
/// # Errors
/// Database errors.
pub async fn withdraw(pool: &Db, id: JobId) -> Result<bool, sqlx::Error> {
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
