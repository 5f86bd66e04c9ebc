//! Publishing jobs to JetStream: one place, used by the ingress and the reconciler alike.
//!
//! Every job is published with `Nats-Msg-Id` set to its id and the publish acknowledgement is
//! awaited, so a job counts as queued only once JetStream has stored it, and publishing it again
//! (a retried request, a reconciler pass) inside the duplicate window stores nothing new.
//!
//! When chatq knows or suspects that a job's copy in JetStream is gone while the duplicate window
//! may still remember it (a claim abandoned by a dead worker, a retry from the dead letters), it
//! publishes a new copy with a new id: [`message_id`] of the job's next `publication`.
//!
//! A new interactive job is queued in one of two places ([`Placement`]): in front, or, when its
//! tenant has more than its fair share of jobs queued already, behind every other tenant's
//! (`{ns}.jobs.overflow`, which workers take from only when the front has nothing for them). So a
//! tenant that floods the queue delays its own jobs, not other tenants'.
//!
//! A job's trace goes with every copy, as the `traceparent` header (see [`crate::trace`]): the
//! worker that runs it continues the trace of the request that created it.

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};

use crate::ids::{ConversationId, JobId};
use crate::job::{JobEnvelope, Lane};
use crate::topology::Topology;
use crate::trace::{TRACEPARENT, TraceContext};

/// JetStream's error code for a store that refused a message (with `discard: new`, a full stream).
const STORE_FAILED: u64 = 10077;

/// Why a job could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishJobError {
    /// The stream is at `queue_max_jobs`: back-pressure, not a fault.
    #[error("the job queue is full")]
    QueueFull,
    #[error("JetStream did not store the job")]
    Unavailable(#[source] PublishError),
}

/// Where a new interactive job waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// With the other jobs of its lane, in the order they came.
    Front,
    /// Behind every other tenant's interactive jobs: its tenant had `fair_share_queued_jobs` or
    /// more queued already. Workers take these after the front of the interactive lane and
    /// before the batch lane.
    Overflow,
}

impl Placement {
    /// Where a job goes whose tenant had `queued_ahead` interactive jobs queued when it was
    /// recorded.
    pub fn for_queued(queued_ahead: i32, fair_share: u32) -> Self {
        if i64::from(queued_ahead) >= i64::from(fair_share) {
            Placement::Overflow
        } else {
            Placement::Front
        }
    }
}

/// The `Nats-Msg-Id` of a job's copy: the job id for the first publication (0), then
/// `<job id>.<publication>`.
pub fn message_id(job_id: JobId, publication: i32) -> String {
    if publication == 0 {
        job_id.to_string()
    } else {
        format!("{job_id}.{publication}")
    }
}

/// Publishes a new job and waits for JetStream to store it. Returns whether JetStream saw it as a
/// duplicate of one already stored. `trace` is the trace the job belongs to (none: the worker
/// starts one).
///
/// # Errors
/// [`PublishJobError::QueueFull`] when the stream refuses new jobs; otherwise NATS is unreachable,
/// the stream is missing, or the acknowledgement did not arrive in time.
pub async fn publish_job(
    js: &Context,
    topology: &Topology,
    job_id: JobId,
    lane: Lane,
    trace: Option<&TraceContext>,
) -> Result<bool, PublishJobError> {
    publish_copy(js, topology, job_id, lane, 0, trace).await
}

/// Publishes a new interactive job where `placement` says, as [`publish_job`] does, naming the
/// conversation of a turn (see [`JobEnvelope::conversation_id`]).
///
/// # Errors
/// As [`publish_job`].
pub async fn publish_placed(
    js: &Context,
    topology: &Topology,
    job_id: JobId,
    lane: Lane,
    conversation_id: Option<ConversationId>,
    placement: Placement,
    trace: Option<&TraceContext>,
) -> Result<bool, PublishJobError> {
    let envelope = JobEnvelope {
        job_id,
        lane,
        conversation_id,
    };
    let subject = placed_subject(topology, lane, placement);
    publish_to(js, subject, &envelope, 0, trace).await
}

fn placed_subject(topology: &Topology, lane: Lane, placement: Placement) -> String {
    match placement {
        Placement::Overflow if lane == Lane::Interactive => topology.overflow_subject(),
        _ => topology.job_subject(lane),
    }
}

/// Publishes one copy of a job where `placement` says, as [`publish_copy`] does.
///
/// # Errors
/// As [`publish_job`].
pub async fn publish_placed_copy(
    js: &Context,
    topology: &Topology,
    job_id: JobId,
    lane: Lane,
    placement: Placement,
    publication: i32,
    trace: Option<&TraceContext>,
) -> Result<bool, PublishJobError> {
    let subject = placed_subject(topology, lane, placement);
    publish_to(js, subject, &copy_of(job_id, lane), publication, trace).await
}

/// The envelope of a copy published again: without the conversation, whose window the worker
/// then reads whole.
fn copy_of(job_id: JobId, lane: Lane) -> JobEnvelope {
    JobEnvelope {
        job_id,
        lane,
        conversation_id: None,
    }
}

/// Publishes one copy of a job (see [`message_id`]), as [`publish_job`] does the first.
///
/// # Errors
/// As [`publish_job`].
pub async fn publish_copy(
    js: &Context,
    topology: &Topology,
    job_id: JobId,
    lane: Lane,
    publication: i32,
    trace: Option<&TraceContext>,
) -> Result<bool, PublishJobError> {
    publish_to(
        js,
        topology.job_subject(lane),
        &copy_of(job_id, lane),
        publication,
        trace,
    )
    .await
}

async fn publish_to(
    js: &Context,
    subject: String,
    envelope: &JobEnvelope,
    publication: i32,
    trace: Option<&TraceContext>,
) -> Result<bool, PublishJobError> {
    let payload = serde_json::to_vec(envelope).unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        message_id(envelope.job_id, publication).as_str(),
    );
    if let Some(trace) = trace {
        headers.insert(TRACEPARENT, trace.to_string().as_str());
    }
    let ack = js
        .publish_with_headers(subject, headers, payload.into())
        .await
        .map_err(classify)?
        .await
        .map_err(classify)?;
    Ok(ack.duplicate)
}

fn classify(err: PublishError) -> PublishJobError {
    if err.kind() == PublishErrorKind::Other && is_store_full(&err) {
        PublishJobError::QueueFull
    } else {
        PublishJobError::Unavailable(err)
    }
}

fn is_store_full(err: &PublishError) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(js) = cause.downcast_ref::<async_nats::jetstream::Error>() {
            let text = js.to_string();
            return js.error_code().0 == STORE_FAILED
                || text.contains("maximum messages")
                || text.contains("maximum bytes");
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::Placement;

    #[test]
    fn a_job_goes_behind_others_once_its_tenant_has_its_fair_share_queued() {
        assert_eq!(Placement::for_queued(0, 8), Placement::Front);
        assert_eq!(Placement::for_queued(7, 8), Placement::Front);
        assert_eq!(Placement::for_queued(8, 8), Placement::Overflow);
        assert_eq!(Placement::for_queued(9_999, 8), Placement::Overflow);
        // A fair share of 0 puts every job with anything queued ahead of it behind others'.
        assert_eq!(Placement::for_queued(0, 0), Placement::Overflow);
    }
}
