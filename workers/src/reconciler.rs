//! The reconciler: Postgres is the source of truth, so whatever it records as queued must be in
//! the JetStream queue. Each pass publishes queued jobs that JetStream never acknowledged (an
//! ingress that crashed between recording and publishing, or a publish that failed), with the
//! same `Nats-Msg-Id`, so a job that did reach the stream is not stored twice.
//!
//! Every worker runs one. Passes lock the rows they publish (`FOR UPDATE SKIP LOCKED`), so
//! several reconcilers share the work instead of repeating it.

use std::sync::Arc;
use std::time::Duration;

use chatq_common::db::jobs;
use chatq_common::job::Lane;
use chatq_common::queue::{PublishJobError, publish_job};
use tokio_util::sync::CancellationToken;

use crate::process::JobContext;

/// Most jobs one pass publishes.
const PASS_LIMIT: i64 = 1000;

/// Republishes jobs Postgres has as queued but JetStream may not.
#[derive(Clone)]
pub struct Reconciler {
    ctx: Arc<JobContext>,
}

impl Reconciler {
    pub fn new(ctx: Arc<JobContext>) -> Self {
        Self { ctx }
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.ctx.settings.reconcile_interval_secs.max(1));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.pass().await {
                Ok(0) => {}
                Ok(published) => tracing::info!(
                    published,
                    "reconciler published jobs JetStream had not acknowledged"
                ),
                Err(err) => {
                    chatq_common::telemetry::log_error_chain("reconciler pass failed", err.as_ref())
                }
            }
        }
    }

    /// One pass. Returns how many jobs it published.
    ///
    /// # Errors
    /// Postgres is unavailable. A NATS failure ends the pass early and is not an error: the jobs
    /// stay unpublished for the next pass.
    pub async fn pass(&self) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let ctx = &self.ctx;
        let mut tx = ctx.pool.begin().await?;
        let older_than = ctx.settings.reconcile_after_secs as f64;
        let pending = jobs::unpublished(&mut tx, older_than, PASS_LIMIT).await?;
        let mut published = Vec::with_capacity(pending.len());
        for (job_id, lane) in pending {
            let lane: Lane = lane.parse().unwrap_or(Lane::Interactive);
            match publish_job(&ctx.jetstream, &ctx.topology, job_id, lane).await {
                Ok(_) => published.push(job_id.as_uuid()),
                Err(PublishJobError::QueueFull) => {
                    tracing::warn!("the job queue is full; the reconciler will try again later");
                    break;
                }
                Err(PublishJobError::Unavailable(err)) => {
                    tracing::warn!(error = %err, "JetStream unavailable; the reconciler will try again later");
                    break;
                }
            }
        }
        jobs::mark_published(&mut *tx, &published).await?;
        tx.commit().await?;
        Ok(published.len())
    }
}
