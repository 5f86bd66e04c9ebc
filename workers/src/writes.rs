//! This worker's claims and replies, written in batches.
//!
//! Jobs run concurrently, and each claims its job before calling the provider and writes its
//! reply after. Through a [`Batcher`] the claims (and the replies) of jobs that reach that step
//! together share one statement: a claim also reads the turn's prompt window, so a job needs two
//! statements in all, however many run at once. A batch that fails as a whole is written again
//! job by job, through the same statements, so each job gets its own outcome.

use chatq_common::batch::{Batcher, Unanswered};
use chatq_common::db::Db;
use chatq_common::db::jobs::{self, ClaimRequest, ClaimedJob, Completion, JobRow, NotClaimed};
use chatq_common::ids::{ConversationId, JobId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::history::HistoryWindows;

/// Most jobs in one statement.
const MAX_BATCH: usize = 128;
/// Batches written at once (each on its own connection).
const PARALLEL: usize = 2;

pub type ClaimResult = Result<Result<ClaimedJob, NotClaimed>, sqlx::Error>;
/// The job as committed, or `None` when the claim was no longer ours.
pub type ReplyResult = Result<Option<JobRow>, sqlx::Error>;

/// How this worker claims: its name and the lease and window every claim takes.
#[derive(Debug, Clone)]
struct Claimer {
    pool: Db,
    worker: String,
    lease_secs: f64,
    history_max_messages: i64,
    /// `tenant_max_jobs_in_flight`: a tenant's override wins.
    max_in_flight: Option<u32>,
}

impl Claimer {
    async fn claim(
        &self,
        items: &[ClaimRequest],
    ) -> Result<Vec<Result<ClaimedJob, NotClaimed>>, sqlx::Error> {
        jobs::claim(
            &self.pool,
            items,
            &self.worker,
            self.lease_secs,
            self.history_max_messages,
            self.max_in_flight,
        )
        .await
    }

    async fn claim_gathered(&self, items: Vec<ClaimRequest>) -> Vec<ClaimResult> {
        match self.claim(&items).await {
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(err) => {
                tracing::debug!(error = %err, jobs = items.len(), "a batch of claims failed; claiming one by one");
                let mut results = Vec::with_capacity(items.len());
                for item in items {
                    results.push(self.claim_one(item).await);
                }
                results
            }
        }
    }

    async fn claim_one(&self, item: ClaimRequest) -> ClaimResult {
        let mut results = self.claim(&[item]).await?;
        Ok(results.pop().unwrap_or(Err(NotClaimed::Missing)))
    }
}

async fn complete_one(pool: &Db, reply: Completion) -> ReplyResult {
    Ok(jobs::complete(pool, std::slice::from_ref(&reply))
        .await?
        .pop()
        .flatten())
}

async fn complete_gathered(pool: &Db, items: Vec<Completion>) -> Vec<ReplyResult> {
    match jobs::complete(pool, &items).await {
        Ok(written) => written.into_iter().map(Ok).collect(),
        Err(err) => {
            tracing::debug!(error = %err, jobs = items.len(), "a batch of replies failed; writing them one by one");
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(complete_one(pool, item).await);
            }
            results
        }
    }
}

/// Claims and replies of this worker's jobs, gathered into batches.
#[derive(Clone)]
pub struct JobWrites {
    pool: Db,
    claimer: Claimer,
    claims: Batcher<ClaimRequest, ClaimResult>,
    windows: HistoryWindows,
    replies: Batcher<Completion, ReplyResult>,
}

impl JobWrites {
    pub fn start(
        pool: Db,
        worker: String,
        lease_secs: f64,
        windows: HistoryWindows,
        max_in_flight: Option<u32>,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let claimer = Claimer {
            pool: pool.clone(),
            worker,
            lease_secs,
            history_max_messages: i64::try_from(windows.max_messages()).unwrap_or(i64::MAX),
            max_in_flight,
        };
        let claims = {
            let claimer = claimer.clone();
            Batcher::start(
                tracker,
                stop.clone(),
                PARALLEL,
                MAX_BATCH,
                move |items: Vec<ClaimRequest>| {
                    let claimer = claimer.clone();
                    async move { claimer.claim_gathered(items).await }
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
                move |items: Vec<Completion>| {
                    let pool = pool.clone();
                    async move { complete_gathered(&pool, items).await }
                },
            )
        };
        Self {
            pool,
            claimer,
            claims,
            windows,
            replies,
        }
    }

    /// Claims a job with this token (see [`jobs::claim`]). A turn of `conversation` reads only
    /// the messages since the window this worker kept from the conversation's last turn, and
    /// comes back with the whole window (see [`HistoryWindows`]).
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim(
        &self,
        id: JobId,
        token: Uuid,
        conversation: Option<ConversationId>,
    ) -> ClaimResult {
        let held = self.windows.held(conversation).await;
        let request = ClaimRequest {
            id,
            token,
            known_seq: HistoryWindows::known_seq(held.as_ref()),
        };
        let mut result = match self.claims.submit(request).await {
            Ok(result) => result,
            // Claiming again is safe: a claim the lost batch made is held by this very token,
            // and is then reported as held elsewhere until its lease runs out.
            Err(Unanswered::Stopped(item)) => self.claimer.claim_one(item).await,
            Err(Unanswered::Lost) => self.claimer.claim_one(request).await,
        };
        if let Ok(Ok(job)) = &mut result {
            self.windows.complete(job, held).await;
        }
        result
    }

    /// Writes a reply (see [`jobs::complete`]).
    ///
    /// # Errors
    /// Database errors.
    pub async fn complete(&self, reply: Completion) -> ReplyResult {
        match self.replies.submit(reply).await {
            Ok(result) => result,
            Err(Unanswered::Stopped(reply)) => complete_one(&self.pool, reply).await,
            // Written or not, unknown: as a database error, the job is retried, and a
            // redelivery of a job already written is acknowledged without a second call.
            Err(Unanswered::Lost) => Err(sqlx::Error::WorkerCrashed),
        }
    }
}
