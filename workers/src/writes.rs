//! This worker's claims and replies, written in batches.
//!
//! Jobs run concurrently, and each claims its job before calling the provider and writes its
//! reply after. Through a [`Batcher`] the claims (and the replies) of jobs that reach that step
//! together share one statement: a claim also reads the turn's prompt window, so a job needs two
//! statements in all, however many run at once. A claim the batch did not make, or a batch that
//! failed as a whole, goes through the single-job path, which says why.

use chatq_common::batch::{Batcher, Unanswered};
use chatq_common::chat::Usage;
use chatq_common::db::jobs::{self, ClaimedJob, Completion, NotClaimed, batch};
use chatq_common::ids::{JobId, MessageId};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Most jobs in one statement.
const MAX_BATCH: usize = 128;
/// Batches written at once (each on its own connection).
const PARALLEL: usize = 2;

type ClaimResult = Result<Result<ClaimedJob, NotClaimed>, sqlx::Error>;

/// A reply to write, owning its data.
#[derive(Debug, Clone)]
pub struct Reply {
    pub id: JobId,
    pub token: Uuid,
    pub reply_message_id: MessageId,
    pub content: String,
    pub finish_reason: String,
    pub usage: Usage,
    pub ttft_ms: Option<i32>,
    pub upstream_ms: i32,
    pub cached: bool,
    pub reply_model: String,
}

impl Reply {
    fn as_completion(&self) -> Completion<'_> {
        Completion {
            id: self.id,
            token: self.token,
            reply_message_id: self.reply_message_id,
            content: &self.content,
            finish_reason: &self.finish_reason,
            usage: self.usage,
            ttft_ms: self.ttft_ms,
            upstream_ms: self.upstream_ms,
            cached: self.cached,
            reply_model: &self.reply_model,
        }
    }
}

/// Claims for this worker, each with its claim token.
#[derive(Clone)]
pub struct JobWrites {
    pool: PgPool,
    claims: Batcher<(JobId, Uuid), ClaimResult>,
    replies: Batcher<Reply, Result<bool, sqlx::Error>>,
    worker: String,
    lease_secs: f64,
}

impl JobWrites {
    pub fn start(
        pool: PgPool,
        worker: String,
        lease_secs: f64,
        history_max_messages: i64,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let claims = {
            let (pool, worker) = (pool.clone(), worker.clone());
            Batcher::start(
                tracker,
                stop.clone(),
                PARALLEL,
                MAX_BATCH,
                move |items: Vec<(JobId, Uuid)>| {
                    let (pool, worker) = (pool.clone(), worker.clone());
                    async move {
                        claim_batch(&pool, &worker, lease_secs, history_max_messages, items).await
                    }
                },
            )
        };
        let replies = {
            let pool = pool.clone();
            Batcher::start(
                tracker,
                stop,
                PARALLEL,
                MAX_BATCH,
                move |items: Vec<Reply>| {
                    let pool = pool.clone();
                    async move { reply_batch(&pool, items).await }
                },
            )
        };
        Self {
            pool,
            claims,
            replies,
            worker,
            lease_secs,
        }
    }

    /// Claims a job (see [`jobs::claim`]).
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim(&self, id: JobId, token: Uuid) -> ClaimResult {
        match self.claims.submit((id, token)).await {
            Ok(result) => result,
            // Claiming again is safe: a claim the lost batch made is held by this very token
            // and answers "held elsewhere" until its lease runs out.
            Err(Unanswered::Stopped(_) | Unanswered::Lost) => {
                jobs::claim(&self.pool, id, token, &self.worker, self.lease_secs).await
            }
        }
    }

    /// Writes a reply (see [`jobs::complete`]).
    ///
    /// # Errors
    /// Database errors.
    pub async fn complete(&self, reply: Reply) -> Result<bool, sqlx::Error> {
        match self.replies.submit(reply).await {
            Ok(result) => result,
            Err(Unanswered::Stopped(reply)) => {
                jobs::complete(&self.pool, &reply.as_completion()).await
            }
            // Written or not, unknown: as a database error, the job is retried, and a
            // redelivery of a job already written is acknowledged without a second call.
            Err(Unanswered::Lost) => Err(sqlx::Error::WorkerCrashed),
        }
    }
}

async fn claim_batch(
    pool: &PgPool,
    worker: &str,
    lease_secs: f64,
    history_max_messages: i64,
    items: Vec<(JobId, Uuid)>,
) -> Vec<ClaimResult> {
    let claimed = if items.len() > 1 {
        match batch::claim_many(pool, &items, worker, lease_secs, history_max_messages).await {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::debug!(error = %err, "batch of claims failed; claiming one by one");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let mut claimed: std::collections::HashMap<JobId, ClaimedJob> =
        claimed.into_iter().map(|job| (job.id, job)).collect();
    let mut results = Vec::with_capacity(items.len());
    for (id, token) in items {
        match claimed.remove(&id) {
            Some(job) => results.push(Ok(Ok(job))),
            // Not claimed by the batch (or no batch): the single path claims it or says why not.
            None => results.push(jobs::claim(pool, id, token, worker, lease_secs).await),
        }
    }
    results
}

async fn reply_batch(pool: &PgPool, items: Vec<Reply>) -> Vec<Result<bool, sqlx::Error>> {
    if items.len() > 1 {
        let completions: Vec<Completion<'_>> = items.iter().map(Reply::as_completion).collect();
        match batch::complete_many(pool, &completions).await {
            Ok(written) => return written.into_iter().map(Ok).collect(),
            Err(err) => {
                tracing::debug!(error = %err, "batch of replies failed; writing them one by one")
            }
        }
    }
    let mut results = Vec::with_capacity(items.len());
    for item in &items {
        results.push(jobs::complete(pool, &item.as_completion()).await);
    }
    results
}
