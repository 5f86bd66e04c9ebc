//! Queueing a recorded job: publish to JetStream, then note the acknowledgement in Postgres.
//!
//! The notes are batched: one `UPDATE … WHERE id = ANY($1)` every few milliseconds for all the
//! jobs published meanwhile, instead of a write per request. A note lost in a crash only means the
//! reconciler publishes that job again, and JetStream drops the duplicate; so does a note skipped
//! because a worker held the job locked at that moment ([`jobs::mark_published`] never waits for a
//! worker's claim, which it could otherwise deadlock with).

use std::time::Duration;

use chatq_common::db::Db;
use chatq_common::db::jobs;
use chatq_common::ids::JobId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most ids one note covers.
const MAX_BATCH: usize = 1000;
/// How long a note waits for company.
const LINGER: Duration = Duration::from_millis(20);

/// The sending side: handlers call [`PublishedMarks::mark`].
#[derive(Clone, Debug)]
pub struct PublishedMarks {
    sender: mpsc::Sender<Uuid>,
}

impl PublishedMarks {
    /// Starts the batching task; it flushes and ends when `shutdown` is cancelled and every
    /// sender is gone.
    pub fn start(
        pool: Db,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(65_536);
        tracker.spawn(run(pool, receiver, shutdown));
        Self { sender }
    }

    /// Notes that JetStream stored this job. Never blocks a request: if the batcher is behind,
    /// the note is dropped and the reconciler covers it.
    pub fn mark(&self, job: JobId) {
        if self.sender.try_send(job.as_uuid()).is_err() {
            tracing::debug!(%job, "publish note dropped; the reconciler will cover it");
        }
    }
}

async fn run(pool: Db, mut receiver: mpsc::Receiver<Uuid>, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            first = receiver.recv() => first,
            () = shutdown.cancelled() => {
                // Drain what is already queued, then stop.
                receiver.close();
                receiver.recv().await
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(id)) => batch.push(id),
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(err) = jobs::mark_published(&pool, &batch).await {
            tracing::warn!(error = %err, jobs = batch.len(), "could not note published jobs; the reconciler will cover them");
        }
        batch.clear();
    }
}
