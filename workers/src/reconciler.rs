//! The reconciler: Postgres is the source of truth, so every job it records as queued must be in
//! the JetStream queue, whatever happened to NATS, an ingress or a worker in the meantime. Every
//! worker runs one. Each pass, every `CHATQ_RECONCILE_INTERVAL_SECS` (I):
//!
//! 1. **A lost stream.** It reads the jobs stream's creation time; a missing stream is created
//!    again, with its consumers ([`Topology::ensure`]). A creation time other than the one
//!    recorded in `jetstream_streams` means the stream was recreated and whatever it held is gone
//!    (NATS lost its store), so every queued job is marked unpublished, in the transaction that
//!    records the new time. Of several reconcilers racing, exactly one does this. The first time
//!    is only recorded: a deployment's first stream, or the one it had before this record.
//! 2. **Dead workers.** A running job whose lease ran out more than `CHATQ_RECONCILE_AFTER_SECS`
//!    (A) ago goes back to `queued`, unpublished, under a new publication: its worker died, and
//!    JetStream, which redelivers after the ack wait, did not hand it to another worker in that
//!    time, so its copy may be gone.
//! 3. **Publishing.** Every queued job without an acknowledged copy that was recorded more than A
//!    ago (younger ones are still being published by their ingress) is published, with the
//!    `Nats-Msg-Id` of its current publication ([`message_id`]): a copy JetStream still holds is
//!    not stored twice, and with the `traceparent` recorded with the job, so the job stays in the
//!    trace of the request that created it. The rows of a batch stay locked while it is published
//!    (`FOR UPDATE SKIP LOCKED`), so reconcilers share the work instead of repeating it.
//! 4. **Lost copies.** A queued job can lose its copy while the stream survives: NATS lost its
//!    last unsynced writes, a copy was handed back (NAK) to a stream recreated meanwhile, or
//!    JetStream stopped delivering it. Every `CHATQ_RECONCILE_AUDIT_SECS` (one reconciler of the
//!    fleet, which claims the audit in Postgres), or at the next pass when the stream holds fewer
//!    copies than Postgres has queued or running jobs published, the reconciler reads the ids the
//!    stream holds (headers only) and marks every queued job published before the read and
//!    missing from it as unpublished, under a new publication: step 3 of the next pass publishes
//!    it.
//!
//! # Timing bounds
//!
//! With W the ack wait (`CHATQ_JOB_ACK_WAIT_SECS`, also the length of a lease):
//!
//! - a job recorded but not published (an ingress crashed in between, or NATS refused the
//!   publish) is published within A + I of being recorded, once NATS answers;
//! - after NATS comes back with an empty store, the loss is noticed within I and the queued jobs
//!   are published in the same pass (those recorded less than A before, within A + I);
//! - a job whose worker died is redelivered by JetStream after W; should its copy be gone, it is
//!   published again within W + A + I of the worker's last heartbeat.
//!
//! A publication noted late (an ingress notes them in batches, within milliseconds) cannot race a
//! lost stream: NATS restarting and a reconciler noticing take seconds. A job published twice is
//! harmless: the claim in Postgres runs it once.
//!
//! - a queued job whose copy was lost while the stream survived is published again within the
//!   audit period plus I (within 2 I when the loss shows in the stream's message count).
//!
//! [`Topology::ensure`]: chatq_common::topology::Topology::ensure

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use chatq_common::db::jobs;
use chatq_common::db::jobs::reconcile::{self, StreamSighting};
use chatq_common::job::Lane;
use chatq_common::queue::{Placement, PublishJobError, message_id, publish_placed_copy};
use chatq_common::topology::TopologyError;
use chatq_common::trace::TraceContext;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::process::JobContext;

/// Most jobs one transaction publishes; a pass repeats until none are left.
const BATCH: i64 = 1000;
/// Publishes awaiting their acknowledgement at once.
const PUBLISHES_IN_FLIGHT: usize = 64;

/// Why a pass stopped early. NATS being unreachable is not one: the pass skips what needs NATS.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Postgres is unavailable")]
    Database(#[from] sqlx::Error),
    #[error("cannot create the lost jobs stream again")]
    Topology(#[from] TopologyError),
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Queued jobs marked unpublished because the stream was recreated.
    pub stream_lost: u64,
    /// Running jobs of dead workers put back in the queue.
    pub abandoned: u64,
    /// Jobs published.
    pub published: u64,
    /// Queued jobs found without a copy in the stream.
    pub lost: u64,
}

impl PassReport {
    /// Adds the pass to `chatq_reconciler_jobs_total`, one series per step.
    fn count(&self) {
        use chatq_common::metrics::{RECONCILER_JOBS, RECONCILER_STEPS};
        let counts = [self.published, self.abandoned, self.stream_lost, self.lost];
        for (step, count) in RECONCILER_STEPS.into_iter().zip(counts) {
            metrics::counter!(RECONCILER_JOBS, "step" => step).increment(count);
        }
    }
}

/// Rebuilds the JetStream queue from Postgres. See the module documentation.
#[derive(Clone)]
pub struct Reconciler {
    ctx: Arc<JobContext>,
}

impl Reconciler {
    pub fn new(ctx: Arc<JobContext>) -> Self {
        Self { ctx }
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.ctx.worker.reconcile_interval_secs.max(1));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let pass = tokio::select! {
                () = shutdown.cancelled() => return,
                pass = self.pass() => pass,
            };
            match pass {
                Ok(report) if report == PassReport::default() => {}
                Ok(report) => tracing::info!(
                    stream_lost = report.stream_lost,
                    abandoned = report.abandoned,
                    lost = report.lost,
                    published = report.published,
                    "reconciler put jobs back in the queue"
                ),
                Err(err) => {
                    chatq_common::telemetry::log_error_chain("reconciler pass failed", &err)
                }
            }
        }
    }

    /// One pass: the three steps of the module documentation, in order.
    ///
    /// # Errors
    /// Postgres is unavailable, or a lost stream cannot be created again.
    pub async fn pass(&self) -> Result<PassReport, ReconcileError> {
        let stream_lost = self.check_stream().await?;
        let after = self.ctx.worker.reconcile_after_secs as f64;
        let abandoned = reconcile::requeue_abandoned(&self.ctx.pool, after).await?;
        let lost = self.audit().await?;
        let mut published = 0;
        // Lane by lane, interactive first: each lane has its own room in the stream, so a batch
        // waiting for room in a full batch lane never holds up an interactive job.
        for lane in Lane::ALL {
            loop {
                let (found, stored) = self.publish_batch(lane, after).await?;
                published += stored;
                if found < BATCH as usize || stored < found as u64 {
                    break;
                }
            }
        }
        let report = PassReport {
            stream_lost,
            abandoned,
            published,
            lost,
        };
        report.count();
        Ok(report)
    }

    /// Step 4. Returns how many queued jobs were found without a copy (0 when no audit was due,
    /// or NATS cannot be asked).
    async fn audit(&self) -> Result<u64, ReconcileError> {
        let ctx = &self.ctx;
        let name = ctx.topology.jobs_stream();
        // Every job published before this instant has its copy in the stream read after it.
        let cutoff = reconcile::now(&ctx.pool).await? - time::Duration::SECOND;
        let Ok(mut stream) = ctx.jetstream.get_stream(&name).await else {
            return Ok(0);
        };
        let Ok(info) = stream.info().await else {
            return Ok(0);
        };
        let held_count = info.state.messages;
        let expected = reconcile::expected_copies(&ctx.pool, cutoff).await?;
        let short = i64::try_from(held_count).unwrap_or(i64::MAX) < expected;
        // Short: at once, but by one reconciler per pass interval; otherwise once a period.
        let every = if short {
            ctx.worker.reconcile_interval_secs.max(1)
        } else {
            ctx.worker.reconcile_audit_secs.max(1)
        };
        if !reconcile::claim_audit(&ctx.pool, &name, every as f64).await? {
            return Ok(0);
        }
        let Some(held) = self.held_copies(&stream, held_count).await else {
            return Ok(0);
        };
        let mut lost = 0;
        let mut after = None;
        loop {
            let page = reconcile::published_queued(&ctx.pool, cutoff, after, BATCH).await?;
            let Some(last) = page.last().copied() else {
                break;
            };
            after = Some(last);
            let missing: Vec<uuid::Uuid> = page
                .iter()
                .copied()
                .filter(|id| !held.contains(id))
                .collect();
            if !missing.is_empty() {
                lost += reconcile::forget_lost_copies(&ctx.pool, &missing, cutoff).await?;
            }
            if page.len() < BATCH as usize {
                break;
            }
        }
        if lost > 0 {
            tracing::warn!(
                stream = %name, jobs = lost, held = held_count, expected,
                "queued jobs had lost their copy in the jobs stream; publishing them again"
            );
        }
        Ok(lost)
    }

    /// The ids of the jobs the stream holds a copy of, read from the copies' `Nats-Msg-Id`
    /// headers; `None` when the stream cannot be read through.
    async fn held_copies(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        count: u64,
    ) -> Option<std::collections::HashSet<uuid::Uuid>> {
        let mut held = std::collections::HashSet::new();
        if count == 0 {
            return Some(held);
        }
        let config = async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("{}.jobs.>", self.ctx.topology.namespace()),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            headers_only: true,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.ok()?;
        let mut messages = consumer.messages().await.ok()?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .ok()??
                .ok()?;
            if let Some(id) = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get("Nats-Msg-Id"))
                .and_then(|id| {
                    id.as_str()
                        .split('.')
                        .next()?
                        .parse::<chatq_common::ids::JobId>()
                        .ok()
                })
            {
                held.insert(id.as_uuid());
            }
            if message.info().map(|info| info.pending == 0).unwrap_or(true) {
                return Some(held);
            }
        }
    }

    /// Step 1. Returns how many queued jobs were marked unpublished (0 when the stream is the
    /// one recorded, or NATS cannot be asked).
    async fn check_stream(&self) -> Result<u64, ReconcileError> {
        let ctx = &self.ctx;
        let name = ctx.topology.jobs_stream();
        let created = match ctx.jetstream.get_stream(&name).await {
            Ok(stream) => stream.cached_info().created,
            Err(err)
                if matches!(err.kind(), GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                tracing::warn!(stream = %name, "the jobs stream is missing (NATS lost its store?); creating it again");
                ctx.topology.ensure(&ctx.jetstream).await?;
                match ctx.jetstream.get_stream(&name).await {
                    Ok(stream) => stream.cached_info().created,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the recreated jobs stream; checking again next pass");
                        return Ok(0);
                    }
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the jobs stream; checking again next pass");
                return Ok(0);
            }
        };
        let mut tx = ctx.pool.begin().await?;
        match reconcile::note_stream_created(&mut tx, &name, created).await? {
            StreamSighting::Recreated => {}
            StreamSighting::Known => return Ok(0),
            StreamSighting::First => {
                tx.commit().await?;
                return Ok(0);
            }
        }
        let forgotten = reconcile::forget_publications(&mut tx).await?;
        tx.commit().await?;
        if forgotten > 0 {
            tracing::warn!(
                stream = %name, created = %created, jobs = forgotten,
                "the jobs stream was recreated; publishing every queued job again"
            );
        }
        Ok(forgotten)
    }

    /// Step 3, for one batch of one lane's jobs. Returns how many jobs were found and how many
    /// JetStream stored.
    async fn publish_batch(&self, lane: Lane, after: f64) -> Result<(usize, u64), ReconcileError> {
        let ctx = &self.ctx;
        let mut tx = ctx.pool.begin().await?;
        let pending = reconcile::unpublished(&mut tx, lane, after, BATCH).await?;
        let found = pending.len();
        let mut publishes = futures::stream::iter(pending)
            .map(|copy| async move {
                // In the trace of the request that created the job.
                let trace = copy.traceparent.as_deref().and_then(TraceContext::parse);
                // Behind other tenants' jobs when its tenant has more than its fair share queued,
                // as the ingress would have placed it now.
                let placement = Placement::for_queued(
                    copy.tenant_queued - 1,
                    ctx.limits.fair_share_queued_jobs,
                );
                let stored = publish_placed_copy(
                    &ctx.jetstream,
                    &ctx.topology,
                    copy.id,
                    lane,
                    placement,
                    copy.publication,
                    trace.as_ref(),
                )
                .await;
                (copy, stored)
            })
            .buffered(PUBLISHES_IN_FLIGHT);
        let mut stored = Vec::with_capacity(found);
        // The first failure ends the batch (dropping the publishes in flight): the jobs stay
        // unpublished for the next pass.
        while let Some((copy, result)) = publishes.next().await {
            match result {
                Ok(_) => stored.push(copy.id.as_uuid()),
                Err(PublishJobError::QueueFull) => {
                    tracing::debug!(%lane, "the lane's queue is full; the reconciler will try again later");
                    break;
                }
                Err(PublishJobError::Unavailable(err)) => {
                    tracing::warn!(
                        job = %message_id(copy.id, copy.publication), error = %err,
                        "JetStream unavailable; the reconciler will try again later"
                    );
                    break;
                }
            }
        }
        drop(publishes);
        jobs::mark_published(&mut *tx, &stored).await?;
        tx.commit().await?;
        Ok((found, stored.len() as u64))
    }
}
