//! One delivery of one job: [`process_one`] claims the job, runs one attempt, records the result
//! and says what should happen to the message ([`Outcome`]). It never acknowledges anything
//! itself; the loop in [`crate::worker`] does that, by outcome, after this returns.
//!
//! The order is what makes "at least once" delivery have an exactly-once effect:
//!
//! 1. **Claim** in Postgres before calling the provider. A job that is finished, or held by a
//!    live claim elsewhere, is not run again.
//! 2. **Call** the provider, streaming deltas out as events, while a heartbeat extends both the
//!    JetStream ack deadline and the Postgres lease.
//! 3. **Commit** the reply and the result in one statement, fenced by the claim token.
//! 4. **Ack** (in the loop), only after the commit. A crash between 3 and 4 leads to a
//!    redelivery that finds the job finished and acks it without calling the provider.
//!
//! The call is dropped, and the job ended by this worker, when the job is cancelled (see
//! [`crate::cancel`]) or its deadline passes; it is handed back when the worker stops and its
//! grace period runs out. A job whose cancel was requested while no live claim held it (its
//! worker died) is ended `cancelled` by the next delivery, without calling the provider.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use chatq_common::Settings;
use chatq_common::chat::{ChatMessage, Usage, estimate_tokens};
use chatq_common::db::jobs::{self, CANCELLED_MESSAGE, ClaimedJob, NotClaimed};
use chatq_common::db::messages;
use chatq_common::events::{EventIds, EventKind, JobEvent};
use chatq_common::ids::{JobId, MessageId};
use chatq_common::job::{JobEnvelope, JobRequest, JobStatus, Lane};
use chatq_common::metrics as names;
use chatq_common::topology::Topology;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cancel::{CancelSwitch, CancelSwitches};
use crate::events::AttemptEvents;
use crate::failure::{database_retry, dead_letter, public_message, retry_delay};
use crate::prompt::build_prompt;
use crate::provider::{Provider, ProviderError, ProviderRequest, StreamItem};
use crate::writes::{JobWrites, Reply as WrittenReply};

/// Everything a worker process shares between the jobs it runs.
pub struct JobContext {
    /// Names this process in claims, logs and heartbeats.
    pub worker_id: String,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub topology: Topology,
    pub provider: Arc<dyn Provider>,
    pub settings: Arc<Settings>,
    /// The cancel switches of the jobs this worker holds.
    pub cancels: Arc<CancelSwitches>,
    /// Claims and replies, written in batches with those of the other jobs running here.
    pub writes: JobWrites,
}

impl JobContext {
    /// The Postgres lease matches the JetStream ack wait: both are extended by the same heartbeat,
    /// so when JetStream redelivers a job whose worker died, its lease has run out too.
    fn lease_secs(&self) -> f64 {
        self.topology.ack_wait().as_secs_f64()
    }

    fn heartbeat_every(&self) -> Duration {
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
    let claimed = match ctx.writes.claim(envelope.job_id, token).await {
        Ok(Ok(job)) => {
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

/// Ends a job whose cancel was requested while no worker held it, with its terminal event.
async fn end_cancelled(ctx: &JobContext, job_id: JobId, delivered: i64) -> Outcome {
    match jobs::finish_cancelled(&ctx.pool, job_id).await {
        Ok(Some(attempts)) => {
            tracing::info!(%job_id, "job cancelled before it could run again");
            let event = JobEvent {
                id: EventIds::after_attempts(attempts),
                event: EventKind::JobCancelled,
                data: json!({
                    "job_id": job_id,
                    "status": JobStatus::Cancelled,
                    "error": { "type": "cancelled", "message": CANCELLED_MESSAGE },
                }),
            };
            if let Ok(payload) = event.to_bytes()
                && let Err(err) = ctx
                    .nats
                    .publish(ctx.topology.events_subject(job_id), payload)
                    .await
            {
                tracing::warn!(%job_id, error = %err, "could not publish a job event");
            }
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

/// One claimed attempt at a job.
struct Attempt<'a> {
    ctx: &'a JobContext,
    lane: Lane,
    token: Uuid,
    job: ClaimedJob,
    /// Deliveries of this job's message so far.
    delivered: i64,
}

/// A reply read from the provider.
struct Reply {
    content: String,
    finish_reason: String,
    usage: Usage,
    /// The model the provider says answered.
    model: String,
    ttft_ms: Option<i32>,
    upstream_ms: i32,
}

/// Why an attempt ended without a reply.
enum Failure {
    Provider {
        error: ProviderError,
        upstream_ms: i32,
    },
    /// The heartbeat found the claim gone: another worker owns the job now.
    ClaimLost,
    /// The grace period of a shutdown ran out.
    HandedBack,
    /// The job was cancelled.
    Cancelled,
    /// The job's deadline passed during the call.
    Expired,
}

impl Attempt<'_> {
    fn id(&self) -> JobId {
        self.job.id
    }

    fn attempt_number(&self) -> u32 {
        u32::try_from(self.job.attempts).unwrap_or(0)
    }

    fn count_finished(&self, status: JobStatus) {
        metrics::counter!(names::JOBS_FINISHED, "lane" => self.lane.as_str(), "status" => status.as_str())
            .increment(1);
    }

    async fn run(
        self,
        delivery: &Acker,
        switch: &CancelSwitch,
        hand_back: &CancellationToken,
    ) -> Outcome {
        let settings = &self.ctx.settings;
        // Event ids count every attempt the job has had, including those before a retry.
        let mut events = AttemptEvents::new(
            self.ctx.nats.clone(),
            &self.ctx.topology,
            self.id(),
            u32::try_from(self.job.earlier_attempts + self.job.attempts).unwrap_or(0),
        );
        if self.attempt_number() > settings.job_max_attempts {
            let message = format!(
                "gave up after {} attempts (the job was delivered again after each worker stopped \
                 without finishing it)",
                settings.job_max_attempts
            );
            return self
                .fail("attempts_exhausted", &message, None, &mut events)
                .await;
        }
        if time::OffsetDateTime::now_utc() > self.job.deadline_at {
            let message = "the job's deadline passed before it could run";
            return self
                .finish(JobStatus::Expired, "expired", message, None, &mut events)
                .await;
        }
        let request: JobRequest = match serde_json::from_value(self.job.request.clone()) {
            Ok(request) => request,
            Err(err) => {
                let message = format!("the stored request cannot be read by this worker: {err}");
                return self
                    .fail("invalid_request", &message, None, &mut events)
                    .await;
            }
        };
        let prompt = match self.prompt(&request).await {
            Ok(prompt) => prompt,
            Err(err) => {
                chatq_common::telemetry::log_error_chain(
                    "cannot read the conversation history",
                    &err,
                );
                let delay = database_retry(self.delivered);
                return self
                    .release(false, "database_unavailable", "retrying", delay)
                    .await;
            }
        };
        events
            .emit(
                EventKind::JobStarted,
                json!({ "job_id": self.id(), "attempt": self.attempt_number() }),
            )
            .await;
        let mut params = request.params().clone();
        params.model = self.job.model.clone();
        let provider_request = ProviderRequest {
            messages: prompt,
            params,
        };
        let deadline = (self.job.deadline_at - time::OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO);
        let started = Instant::now();
        // Whichever ends first: the call drops the others, the others drop the call.
        let result = tokio::select! {
            result = self.call_provider(&provider_request, &mut events) => result,
            stop = self.heartbeat(delivery) => Err(stop),
            () = hand_back.cancelled() => Err(Failure::HandedBack),
            () = switch.tripped() => Err(Failure::Cancelled),
            () = tokio::time::sleep(deadline) => Err(Failure::Expired),
        };
        let upstream_ms = Some(i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX));
        match result {
            Ok(reply) => self.succeed(reply, &mut events).await,
            Err(Failure::ClaimLost) => {
                tracing::warn!(job_id = %self.id(), "lost the claim on a job mid-call; leaving it to its new owner");
                Outcome::Abandon
            }
            Err(Failure::Cancelled) => {
                self.finish(
                    JobStatus::Cancelled,
                    "cancelled",
                    CANCELLED_MESSAGE,
                    upstream_ms,
                    &mut events,
                )
                .await
            }
            Err(Failure::Expired) => {
                let message = "the job's deadline passed while the provider was answering";
                self.finish(
                    JobStatus::Expired,
                    "expired",
                    message,
                    upstream_ms,
                    &mut events,
                )
                .await
            }
            Err(Failure::HandedBack) => {
                self.release(
                    true,
                    "handed_back",
                    "the worker stopped; the job will run again",
                    Duration::ZERO,
                )
                .await
            }
            Err(Failure::Provider { error, upstream_ms }) => {
                self.provider_failed(error, upstream_ms, &mut events).await
            }
        }
    }

    async fn prompt(&self, request: &JobRequest) -> Result<Vec<ChatMessage>, sqlx::Error> {
        match request {
            JobRequest::ChatCompletion { messages, .. } => Ok(messages.clone()),
            JobRequest::ConversationTurn { .. } => {
                let settings = &self.ctx.settings;
                let (Some(conversation), Some(upto)) =
                    (self.job.conversation_id, self.job.user_seq)
                else {
                    return Ok(Vec::new());
                };
                // A batched claim read the window already.
                let history = match &self.job.history {
                    Some(history) => history.clone(),
                    None => {
                        let max_messages =
                            i64::try_from(settings.history_max_messages).unwrap_or(i64::MAX);
                        messages::prompt_window(&self.ctx.pool, conversation, upto, max_messages)
                            .await?
                    }
                };
                Ok(build_prompt(
                    self.job.system_prompt.as_deref(),
                    history,
                    settings.history_max_tokens,
                ))
            }
        }
    }

    /// Streams the reply, publishing deltas as they arrive. Deltas that are already waiting are
    /// merged into one event (never delaying the first token).
    async fn call_provider(
        &self,
        request: &ProviderRequest,
        events: &mut AttemptEvents,
    ) -> Result<Reply, Failure> {
        let started = Instant::now();
        let elapsed_ms =
            |since: Instant| i32::try_from(since.elapsed().as_millis()).unwrap_or(i32::MAX);
        let failed = |error| Failure::Provider {
            error,
            upstream_ms: elapsed_ms(started),
        };
        let mut stream = self
            .ctx
            .provider
            .complete_stream(request)
            .await
            .map_err(failed)?;
        let mut content = String::new();
        let mut ttft_ms = None;
        let mut pending = String::new();
        loop {
            let Some(item) = stream.next().await else {
                return Err(failed(ProviderError::Truncated));
            };
            let mut done = None;
            match item.map_err(failed)? {
                StreamItem::Delta(text) => pending.push_str(&text),
                StreamItem::Done {
                    finish_reason,
                    usage,
                    model,
                } => done = Some((finish_reason, usage, model)),
            }
            // Merge deltas that are already here, without waiting for more.
            while done.is_none()
                && let Some(Some(item)) = stream.next().now_or_never()
            {
                match item.map_err(failed)? {
                    StreamItem::Delta(text) => pending.push_str(&text),
                    StreamItem::Done {
                        finish_reason,
                        usage,
                        model,
                    } => done = Some((finish_reason, usage, model)),
                }
            }
            if !pending.is_empty() && (done.is_some() || !events.should_coalesce()) {
                ttft_ms.get_or_insert_with(|| elapsed_ms(started));
                events.delta(&pending).await;
                content.push_str(&pending);
                pending.clear();
            }
            if let Some((finish_reason, usage, model)) = done {
                let usage = usage.unwrap_or_else(|| {
                    let prompt: usize = request
                        .messages
                        .iter()
                        .map(|m| estimate_tokens(&m.content))
                        .sum();
                    Usage::new(
                        u32::try_from(prompt).unwrap_or(u32::MAX),
                        u32::try_from(estimate_tokens(&content)).unwrap_or(u32::MAX),
                    )
                });
                let upstream_ms = elapsed_ms(started);
                if let Some(ttft) = ttft_ms {
                    metrics::histogram!(names::PROVIDER_TTFT).record(f64::from(ttft) / 1000.0);
                }
                metrics::histogram!(names::PROVIDER_DURATION)
                    .record(f64::from(upstream_ms) / 1000.0);
                return Ok(Reply {
                    content,
                    finish_reason,
                    usage,
                    model,
                    ttft_ms,
                    upstream_ms,
                });
            }
        }
    }

    /// Extends the JetStream ack deadline and the Postgres lease until the claim is lost or the
    /// job's cancel is found in Postgres. Returns only then; the call it runs beside is dropped.
    async fn heartbeat(&self, delivery: &Acker) -> Failure {
        let lease = Duration::from_secs_f64(self.ctx.lease_secs());
        let mut last_renewed = Instant::now();
        let mut ticks = tokio::time::interval(self.ctx.heartbeat_every());
        ticks.tick().await; // The first tick is immediate; the claim was just made.
        loop {
            ticks.tick().await;
            if let Err(err) = delivery.ack_with(AckKind::Progress).await {
                tracing::warn!(job_id = %self.id(), error = %err, "could not extend the job's ack deadline");
            }
            let ids = [self.id().as_uuid()];
            match jobs::renew_leases(&self.ctx.pool, &ids, &[self.token], self.ctx.lease_secs())
                .await
            {
                Ok(renewal) if !renewal.lost.is_empty() => return Failure::ClaimLost,
                Ok(renewal) if !renewal.cancel_requested.is_empty() => return Failure::Cancelled,
                Ok(_) => last_renewed = Instant::now(),
                Err(err) => {
                    tracing::warn!(job_id = %self.id(), error = %err, "could not extend the job's lease");
                    // Past our lease another worker may claim the job: stop before that can happen.
                    if last_renewed.elapsed() + self.ctx.heartbeat_every() >= lease {
                        return Failure::ClaimLost;
                    }
                }
            }
        }
    }

    async fn succeed(&self, reply: Reply, events: &mut AttemptEvents) -> Outcome {
        let reply_message_id = MessageId::new();
        let written = WrittenReply {
            id: self.id(),
            token: self.token,
            reply_message_id,
            content: reply.content.clone(),
            finish_reason: reply.finish_reason.clone(),
            usage: reply.usage,
            ttft_ms: reply.ttft_ms,
            upstream_ms: reply.upstream_ms,
            cached: false,
            reply_model: reply.model.clone(),
        };
        match self.ctx.writes.complete(written).await {
            Ok(true) => {
                // Fault testing only (CHATQ_FAULT_EXIT_AFTER_COMMIT): crash between commit and ack.
                fault_exit_after_commit(&self.ctx.settings, self.id());
                tracing::debug!(job_id = %self.id(), upstream_ms = reply.upstream_ms, "job succeeded");
                let data = json!({
                    "job_id": self.id(),
                    "status": JobStatus::Succeeded,
                    "message_id": self.job.conversation_id.map(|_| reply_message_id),
                    "content": reply.content,
                    "finish_reason": reply.finish_reason,
                    "usage": reply.usage,
                    "model": reply.model,
                    "cached": false,
                });
                events.emit(EventKind::JobSucceeded, data).await;
                self.count_finished(JobStatus::Succeeded);
                Outcome::Ack
            }
            Ok(false) => Outcome::Abandon,
            Err(err) => {
                chatq_common::telemetry::log_error_chain(
                    "cannot record a job's reply; it will run again",
                    &err,
                );
                // The claim stays until its lease runs out; the redelivery then claims it afresh.
                Outcome::Nak(Duration::from_secs_f64(self.ctx.lease_secs()))
            }
        }
    }

    async fn provider_failed(
        &self,
        error: ProviderError,
        upstream_ms: i32,
        events: &mut AttemptEvents,
    ) -> Outcome {
        let max = self.ctx.settings.job_max_attempts;
        let message = public_message(&error);
        if error.is_retryable() && self.attempt_number() < max {
            let delay = retry_delay(self.attempt_number(), error.retry_after());
            tracing::info!(
                job_id = %self.id(), attempt = self.attempt_number(), retry_in_ms = delay.as_millis() as u64,
                error = %error, "provider call failed; will retry"
            );
            return self
                .release(false, error.error_type(), &message, delay)
                .await;
        }
        let message = if error.is_retryable() {
            format!("{message} (gave up after {max} attempts)")
        } else {
            message
        };
        self.fail(error.error_type(), &message, Some(upstream_ms), events)
            .await
    }

    /// Hands the job back for another attempt and asks for redelivery after `delay`.
    async fn release(
        &self,
        refund_attempt: bool,
        error_type: &str,
        message: &str,
        delay: Duration,
    ) -> Outcome {
        match jobs::release(
            &self.ctx.pool,
            self.id(),
            self.token,
            refund_attempt,
            error_type,
            message,
        )
        .await
        {
            Ok(true) => Outcome::Nak(delay),
            Ok(false) => Outcome::Abandon,
            Err(err) => {
                chatq_common::telemetry::log_error_chain(
                    "cannot hand a job back; its lease will run out",
                    &err,
                );
                Outcome::Nak(Duration::from_secs_f64(self.ctx.lease_secs()))
            }
        }
    }

    async fn fail(
        &self,
        error_type: &str,
        message: &str,
        upstream_ms: Option<i32>,
        events: &mut AttemptEvents,
    ) -> Outcome {
        let outcome = self
            .finish(JobStatus::Failed, error_type, message, upstream_ms, events)
            .await;
        if outcome == Outcome::Ack {
            dead_letter(self.ctx, &self.job, self.lane, error_type, message).await;
        }
        outcome
    }

    async fn finish(
        &self,
        status: JobStatus,
        error_type: &str,
        message: &str,
        upstream_ms: Option<i32>,
        events: &mut AttemptEvents,
    ) -> Outcome {
        let written = jobs::finish_unsuccessfully(
            &self.ctx.pool,
            self.id(),
            self.token,
            status,
            error_type,
            message,
            upstream_ms,
        )
        .await;
        match written {
            Ok(true) => {
                tracing::info!(job_id = %self.id(), %status, error_type, "job ended without a reply");
                let event = if status == JobStatus::Cancelled {
                    EventKind::JobCancelled
                } else {
                    EventKind::JobFailed
                };
                let data = json!({
                    "job_id": self.id(),
                    "status": status,
                    "error": { "type": error_type, "message": message },
                });
                events.emit(event, data).await;
                self.count_finished(status);
                Outcome::Ack
            }
            Ok(false) => Outcome::Abandon,
            Err(err) => {
                chatq_common::telemetry::log_error_chain(
                    "cannot record a job's failure; will retry",
                    &err,
                );
                Outcome::Nak(Duration::from_secs_f64(self.ctx.lease_secs()))
            }
        }
    }
}

/// Results committed by this process, counted by [`fault_exit_after_commit`].
static COMMITTED_FOR_FAULT: AtomicU64 = AtomicU64::new(0);

/// For fault testing only (`CHATQ_FAULT_EXIT_AFTER_COMMIT`): ends the process right after a
/// job's result is committed and before its message is acknowledged, as a crash would. The
/// redelivery must then find the job finished. Does nothing when the setting is 0.
fn fault_exit_after_commit(settings: &Settings, job_id: JobId) {
    let after = settings.fault_exit_after_commit;
    if after == 0 || COMMITTED_FOR_FAULT.fetch_add(1, Ordering::SeqCst) + 1 < after {
        return;
    }
    tracing::error!(%job_id, "CHATQ_FAULT_EXIT_AFTER_COMMIT: exiting before acknowledging this job");
    std::process::exit(chatq_common::queue::FAULT_EXIT_CODE);
}
