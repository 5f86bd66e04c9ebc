//! One claimed attempt at a job: check it may still run, build the prompt, call the provider
//! beside a heartbeat, then commit the outcome and publish the terminal event.
//!
//! Every outcome is written with the claim token, so an attempt whose claim was taken over
//! (its lease ran out while the worker was stalled) writes nothing and lets the new owner finish.

use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use chatq_common::chat::ChatMessage;
use chatq_common::db::jobs::{self, CANCELLED_MESSAGE, ClaimedJob, Completion};
use chatq_common::events::JobView;
use chatq_common::ids::{JobId, MessageId};
use chatq_common::job::{JobRequest, JobStatus, Lane};
use chatq_common::metrics as names;
use chatq_common::reply_cache::CacheTier;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache::answer::{Answered, answer, prepare};
use crate::call::CallFailed;
use crate::cancel::CancelSwitch;
use crate::events::AttemptEvents;
use crate::failure::{dead_letter, public_message, retry_delay};
use crate::process::{JobContext, Outcome};
use crate::prompt::build_prompt;
use crate::provider::ProviderRequest;

/// One claimed attempt at a job.
pub struct Attempt<'a> {
    pub ctx: &'a JobContext,
    pub lane: Lane,
    /// The claim token: every write of this attempt is fenced by it.
    pub token: Uuid,
    pub job: ClaimedJob,
    /// Deliveries of this job's message so far.
    pub delivered: i64,
}

/// Why an attempt ended without a reply.
enum Failure {
    Provider(CallFailed),
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

    pub async fn run(
        self,
        delivery: &Acker,
        switch: &CancelSwitch,
        hand_back: &CancellationToken,
    ) -> Outcome {
        // Event ids count every attempt the job has had, including those before a retry.
        let mut events = AttemptEvents::new(
            self.ctx.nats.clone(),
            &self.ctx.topology,
            self.id(),
            u32::try_from(self.job.earlier_attempts + self.job.attempts).unwrap_or(0),
        );
        if self.attempt_number() > self.ctx.max_attempts {
            let message = format!(
                "gave up after {} attempts (the job was delivered again after each worker stopped \
                 without finishing it)",
                self.ctx.max_attempts
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
        let mut params = request.params().clone();
        params.model = self.job.model.clone();
        let provider_request = ProviderRequest {
            messages: self.prompt(&request),
            params,
            body: match &request {
                JobRequest::ChatCompletion { body, .. } => body.clone(),
                JobRequest::ConversationTurn { .. } => None,
            },
            lane: self.lane,
        };
        // Looked up before `job.started`, so the event can say the reply is cached.
        let prepared = prepare(
            self.ctx.cache.as_deref(),
            self.job.tenant_id,
            &provider_request,
        )
        .await;
        events
            .started(self.attempt_number(), prepared.hit_tier())
            .await;
        tracing::debug!("job started");
        let deadline = (self.job.deadline_at - time::OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO);
        let started = Instant::now();
        // Whichever ends first: the call drops the others, the others drop the call.
        let call = answer(
            prepared,
            self.ctx.provider.as_ref(),
            &provider_request,
            &mut events,
        );
        let result = tokio::select! {
            result = call => result.map_err(Failure::Provider),
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
            Err(Failure::Provider(failed)) => self.provider_failed(failed, &mut events).await,
        }
    }

    /// The prompt as text: a chat completion's messages (their text, for estimates, when the
    /// request body is sent as given); a turn's system prompt and history window, which the
    /// claim read.
    fn prompt(&self, request: &JobRequest) -> Vec<ChatMessage> {
        match request {
            JobRequest::ChatCompletion {
                body: Some(body), ..
            } => chatq_common::chat::text_messages(body),
            JobRequest::ChatCompletion { messages, .. } => messages.clone(),
            JobRequest::ConversationTurn { .. } => build_prompt(
                self.job.system_prompt.as_deref(),
                self.job.history.iter().map(|(_, m)| m.clone()).collect(),
                self.ctx.limits.history_max_tokens,
            ),
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

    #[tracing::instrument(level = "debug", name = "commit", skip_all)]
    async fn succeed(&self, answered: Answered, events: &mut AttemptEvents) -> Outcome {
        let Answered { reply, cache, key } = answered;
        let upstream_ms = reply.upstream_ms;
        let first = reply.choices.first();
        let content = first
            .and_then(|c| c.message.content.clone())
            .unwrap_or_default();
        let finish_reason = first.map_or_else(|| "stop".to_owned(), |c| c.finish_reason.clone());
        // A conversation keeps its reply as text; a chat completion keeps its whole answer.
        let choices = self.job.conversation_id.is_none().then_some(reply.choices);
        let reply_message_id = MessageId::new();
        let completion = Completion {
            id: self.id(),
            token: self.token,
            conversation_id: self.job.conversation_id,
            reply_message_id,
            content,
            finish_reason,
            choices,
            usage: reply.usage,
            ttft_ms: reply.ttft_ms,
            upstream_ms,
            cache,
            reply_model: reply.model,
        };
        match self.ctx.writes.complete(completion).await {
            Ok(Some(job)) => {
                #[cfg(feature = "fault-injection")]
                chatq_common::fault::reached(
                    chatq_common::fault::FaultPoint::AfterCommit,
                    self.id(),
                );
                let cache = cache.map(CacheTier::as_str);
                tracing::debug!(job_id = %self.id(), upstream_ms, cache, "job succeeded");
                // A conversation's reply can be rated; a rating down evicts what served it.
                if let (Some(cache), Some(key), Some(_)) =
                    (&self.ctx.cache, key, self.job.conversation_id)
                {
                    cache.index_message(reply_message_id, key).await;
                }
                events.ended(JobView::from(job)).await;
                self.count_finished(JobStatus::Succeeded);
                Outcome::Ack
            }
            Ok(None) => Outcome::Abandon,
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

    async fn provider_failed(&self, failed: CallFailed, events: &mut AttemptEvents) -> Outcome {
        let CallFailed { error, upstream_ms } = failed;
        let max = self.ctx.max_attempts;
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

    #[tracing::instrument(level = "debug", name = "commit", skip_all, fields(%status))]
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
            Ok(Some(job)) => {
                tracing::info!(job_id = %self.id(), %status, error_type, "job ended without a reply");
                events.ended(JobView::from(job)).await;
                self.count_finished(status);
                Outcome::Ack
            }
            Ok(None) => Outcome::Abandon,
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
