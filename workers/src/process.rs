//! One delivery of one job: [`process_one`] claims the job, runs one attempt, records the result
//! and says what should happen to the message ([`Outcome`]). It never acknowledges anything
//! itself; the loop in [`crate::worker`] does that, by outcome, after this returns.
//!
//! The order is what makes "at least once" delivery have an exactly-once effect:
//!
//! 1. **Claim** in Postgres before calling the provider. A job that is finished, or held by a
//!    live claim elsewhere, is not run again.
//! 2. **Call** the provider, streaming deltas out as events, while a heartbeat extends both the
//!    JetStream ack deadline and the Postgres lease ([`crate::attempt`]).
//! 3. **Commit** the reply and the result in one statement, fenced by the claim token.
//! 4. **Ack** (in the loop), only after the commit. A crash between 3 and 4 leads to a
//!    redelivery that finds the job finished and acks it without calling the provider.
//!
//! The call is dropped, and the job ended by this worker, when the job is cancelled (see
//! [`crate::cancel`]) or its deadline passes; it is handed back when the worker stops and its
//! grace period runs out. A job whose cancel was requested while no live claim held it (its
//! worker died) is ended `cancelled` by the next delivery, without calling the provider.
//!
//! # Spans
//!
//! A delivery runs in the [`job_span`] the loop opens (INFO, so that every line logged for the
//! job carries its trace id and job id at the default log level). Its steps have DEBUG spans of
//! their own: `claim`, `call` (the provider call) and `commit` (the reply or the failure written).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::Acker;
use chatq_common::db::Db;
use chatq_common::db::jobs::{self, NotClaimed};
use chatq_common::events::{self, JobEvent};
use chatq_common::ids::JobId;
use chatq_common::job::JobEnvelope;
use chatq_common::metrics as names;
use chatq_common::settings::{LimitSettings, WorkerSettings};
use chatq_common::topology::Topology;
use chatq_common::trace::{TRACEPARENT, TraceContext};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::attempt::Attempt;
use crate::cache::ReplyCache;
use crate::cancel::CancelSwitches;
use crate::failure::database_retry;
use crate::provider::Provider;
use crate::writes::JobWrites;

/// Everything a worker process shares between the jobs it runs.
pub struct JobContext {
    /// Names this process in claims, logs and heartbeats.
    pub worker_id: String,
    pub pool: Db,
    pub nats: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub topology: Topology,
    pub provider: Arc<dyn Provider>,
    pub worker: WorkerSettings,
    /// Limits an attempt applies (the history window, in tokens).
    pub limits: LimitSettings,
    /// Attempts a job gets before it ends `failed` (`job_max_attempts`).
    pub max_attempts: u32,
    /// The cancel switches of the jobs this worker holds.
    pub cancels: Arc<CancelSwitches>,
    /// Claims and replies, written in batches with those of the other jobs running here.
    pub writes: JobWrites,
    /// The reply cache, unless `cache_enabled` is off.
    pub cache: Option<Arc<ReplyCache>>,
}

impl JobContext {
    /// The Postgres lease matches the JetStream ack wait: both are extended by the same heartbeat,
    /// so when JetStream redelivers a job whose worker died, its lease has run out too.
    pub fn lease_secs(&self) -> f64 {
        self.topology.ack_wait().as_secs_f64()
    }

    pub fn heartbeat_every(&self) -> Duration {
        self.topology.ack_wait() / 3
    }
}

/// What to do with the message once [`process_one`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done with it (finished now, or found already finished): remove it from the queue.
    Ack,
    /// Deliver it again after this delay (a retry, or a job another worker still holds).
    Nak(Duration),
    /// Never deliver it again (it cannot be parsed).
    Term,
    /// Neither: another worker took the job over and owns its message now.
    Abandon,
}

/// The span one delivery of a job runs in: `job`, with the job's `trace_id` (continuing the
/// trace in the message's `traceparent` header, or a new one if it has none or an invalid one),
/// `job_id`, `lane`, and the `attempt` [`process_one`] records once it has claimed the job.
pub fn job_span(envelope: &JobEnvelope, headers: Option<&HeaderMap>) -> tracing::Span {
    let traceparent = headers
        .and_then(|headers| headers.get(TRACEPARENT))
        .map(|value| value.as_str());
    let trace = TraceContext::continue_or_start(traceparent);
    tracing::info_span!(
        "job",
        trace_id = %trace.trace_id(),
        job_id = %envelope.job_id,
        lane = %envelope.lane,
        attempt = tracing::field::Empty,
    )
}

/// Runs one delivery of a job. See the module documentation for the order of steps.
/// `delivered` is how many times JetStream has delivered this message (1 the first time).
pub async fn process_one(
    ctx: &JobContext,
    envelope: &JobEnvelope,
    delivery: &Acker,
    delivered: i64,
    hand_back: &CancellationToken,
) -> Outcome {
    // Before the claim, so a cancel notice that arrives once the job is ours is not missed.
    let switch = ctx.cancels.register(envelope.job_id);
    let token = Uuid::new_v4();
    let claim = ctx
        .writes
        .claim(envelope.job_id, token, envelope.conversation_id);
    let claimed = match claim.instrument(tracing::debug_span!("claim")).await {
        Ok(Ok(job)) => {
            tracing::Span::current().record("attempt", job.attempts);
            if job.attempts == 1 {
                // Time in the queue, from creation to the first start.
                let waited = (time::OffsetDateTime::now_utc() - job.created_at).as_seconds_f64();
                metrics::histogram!(names::QUEUE_WAIT, "lane" => envelope.lane.as_str())
                    .record(waited.max(0.0));
            }
            job
        }
        Ok(Err(NotClaimed::Missing | NotClaimed::Finished(_))) => return Outcome::Ack,
        Ok(Err(NotClaimed::HeldElsewhere { lease_left })) => {
            return Outcome::Nak(lease_left + Duration::from_secs(1));
        }
        // Not an attempt: the job waits in the queue while other tenants' jobs start.
        Ok(Err(NotClaimed::TenantAtQuota)) => return Outcome::Nak(quota_wait(delivered)),
        Ok(Err(NotClaimed::CancelRequested)) => {
            return end_cancelled(ctx, envelope.job_id, delivered).await;
        }
        Err(err) => {
            chatq_common::telemetry::log_error_chain("cannot claim a job; will retry", &err);
            return Outcome::Nak(database_retry(delivered));
        }
    };
    let attempt = Attempt {
        ctx,
        lane: envelope.lane,
        token,
        job: claimed,
        delivered,
    };
    attempt.run(delivery, &switch, hand_back).await
}

/// How long a job whose tenant is at its `jobs_in_flight` quota waits before it is offered
/// again: a second for each time it was delivered, up to five, so a tenant with a long backlog
/// over its quota costs the fleet about one claim per queued job every few seconds. JetStream
/// counts these deliveries; one that reaches `max_deliver` gets a new copy from the reconciler
/// (see `worker::pull`), so waiting never ends a job.
fn quota_wait(delivered: i64) -> Duration {
    Duration::from_secs(delivered.clamp(1, 5).unsigned_abs())
}

/// Ends a job whose cancel was requested while no worker held it, with its terminal event.
async fn end_cancelled(ctx: &JobContext, job_id: JobId, delivered: i64) -> Outcome {
    match jobs::finish_cancelled(&ctx.pool, job_id).await {
        Ok(Some(job)) => {
            tracing::info!(%job_id, "job cancelled before it could run again");
            let event = JobEvent::ended_outside_attempt(job);
            events::publish(&ctx.nats, &ctx.topology, job_id, &event).await;
            Outcome::Ack
        }
        // Finished or claimed meanwhile: the delivery that holds it settles it.
        Ok(None) => Outcome::Ack,
        Err(err) => {
            chatq_common::telemetry::log_error_chain(
                "cannot end a cancelled job; will retry",
                &err,
            );
            Outcome::Nak(database_retry(delivered))
        }
    }
}
