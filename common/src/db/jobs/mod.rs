//! Jobs: recorded by the ingress, claimed and finished by workers, republished by the reconciler.
//!
//! The life of a job in this table, one module per step:
//!
//! 1. [`record`]: the ingress records the job (`queued`), with the user message of a conversation
//!    turn, in one transaction for every request that arrived together. JetStream's acknowledgement
//!    is then noted by [`mark_published`].
//! 2. [`claim`]: a worker claims it (`running`, a fresh claim token and a lease) before calling the
//!    provider. A job that is already finished, or held by a live claim, is not claimed again.
//! 3. [`finish`]: the worker completes it (reply message and result together), hands it back for a
//!    later attempt, or ends it unsuccessfully. Each of these needs the claim token, so a worker
//!    whose claim was taken over cannot write. Each returns the job as committed, which is what the
//!    job's terminal event carries.
//!
//! Every hot write takes arrays: a batch of one is still a batch, so each rule (busy, full, not
//! found, duplicate key, another tenant's id) is decided in one place.
//!
//! A client may [`finish::request_cancel`] at any point: a queued job ends `cancelled` at once; a
//! running one is marked, its worker notices (told over NATS, or by its next lease renewal) and
//! ends it; a job whose worker died is ended by the next delivery ([`finish::finish_cancelled`]).
//!
//! [`read`] holds the reads clients make, [`reconcile`] what the reconciler needs to rebuild the
//! queue from this table, and [`dead_letters`] the operator's view of jobs that failed for good.
//!
//! Lock order: a write that touches a conversation and its jobs locks the conversation first
//! (recording a turn, completing one, deleting or clearing a conversation), so two of them can
//! never wait on each other.

pub mod claim;
pub mod dead_letters;
pub mod finish;
pub mod read;
pub mod reconcile;
pub mod record;

use uuid::Uuid;

/// The index behind 409 `conversation_busy`: one reply in progress per conversation.
pub const ONE_ACTIVE_PER_CONVERSATION: &str = "jobs_one_active_per_conversation";

pub use claim::{ClaimRequest, ClaimedJob, NotClaimed, Renewal, claim, renew_leases};
pub use finish::{
    CANCELLED_MESSAGE, CancelOutcome, Completion, cancel_queued, complete, finish_cancelled,
    finish_unsuccessfully, release, request_cancel,
};
pub use read::{JobRow, ended_or_gone, find_by_idempotency_key, get, get_any};
pub use record::{
    Idempotency, NewJob, NewTurnMessage, Recorded, RecordedJob, record, record_again,
    record_gathered, withdraw,
};

/// Notes that JetStream acknowledged these jobs, so the reconciler leaves them alone. Batched:
/// the ingress calls this for many jobs at once.
///
/// A job another transaction holds locked right now (a worker claiming or finishing it) is
/// skipped, never waited for: its rows would be locked in whatever order the plan reads them,
/// and a claim locks its jobs in id order, so a note waiting for one job while holding another
/// could deadlock with a claim, and Postgres breaks a deadlock only after `deadlock_timeout`
/// (a second, by default), which the claimed jobs' clients then wait for too. A job left without
/// its note is harmless: a running or finished one needs none, and a queued one is published
/// again by the reconciler under the same `Nats-Msg-Id` (a duplicate JetStream drops, and a job
/// published twice still runs once). A transaction that locked the jobs itself (the
/// reconciler's) notes all of them.
///
/// # Errors
/// Database errors.
pub async fn mark_published(
    db: impl sqlx::PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"WITH free AS (
               SELECT id FROM jobs WHERE id = ANY($1) AND published_at IS NULL
                  FOR UPDATE SKIP LOCKED
           )
           UPDATE jobs SET published_at = now() FROM free WHERE jobs.id = free.id"#,
        ids,
    )
    .execute(db)
    .await?;
    Ok(())
}
