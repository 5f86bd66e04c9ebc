//! The events a job emits, as they travel over NATS on `<namespace>.events.<job id>` and as SSE
//! clients receive them: one typed [`JobEvent`] for every producer (workers, the ingress when it
//! cancels a queued job) and every consumer (event hubs, waits, streamed chat completions).
//!
//! On the wire an event is `{"id": 7, "event": "message.delta", "data": {"delta": "Hel"}}`; an SSE
//! client gets `id`, `event` and `data` as the three SSE fields.
//!
//! A terminal event (`job.succeeded`, `job.failed`, `job.cancelled`) carries the whole job as it was
//! committed ([`JobView`], built from the row the commit returned), so no reader has to go back to
//! Postgres to learn the reply (see `nats/README.md`).
//!
//! Event ids increase through a job's life and survive retries without coordination: attempt `k`
//! numbers its events from `k × 1,000,000 + 1`, so every event of a later attempt sorts after every
//! event of an earlier one. `job.queued` is id 0. Ids are not contiguous; clients only compare
//! them (`Last-Event-ID` resumes after the given id).

use serde::{Deserialize, Serialize};

use crate::db::jobs::JobRow;
use crate::ids::JobId;
use crate::job::JobStatus;
pub use crate::job::view::JobView;
use crate::reply_cache::CacheTier;
use crate::topology::Topology;

/// Events one attempt may number; beyond this a worker coalesces deltas (see [`EventIds`]).
pub const EVENTS_PER_ATTEMPT: u64 = 1_000_000;

/// One event on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub id: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened, with its data. The tag is the SSE event name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data")]
pub enum EventBody {
    /// The job is recorded and waits in the queue (made by the ingress's event hub, id 0).
    #[serde(rename = "job.queued")]
    Queued(Queued),
    /// An attempt started; a higher `attempt` than the last one seen means the reply restarted.
    #[serde(rename = "job.started")]
    Started(Started),
    /// A piece of the reply.
    #[serde(rename = "message.delta")]
    Delta(Delta),
    #[serde(rename = "job.succeeded")]
    Succeeded(Box<JobView>),
    /// Failed or expired (the job's `status` says which).
    #[serde(rename = "job.failed")]
    Failed(Box<JobView>),
    #[serde(rename = "job.cancelled")]
    Cancelled(Box<JobView>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub job_id: JobId,
    pub status: JobStatus,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub job_id: JobId,
    pub attempt: u32,
    /// The reply is already in the reply cache: it is played back, not asked of the provider.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// Which tier holds it (`exact` or `semantic`), when `cached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheTier>,
}

/// A piece of the reply: `{"delta": "Hel"}` for text, with `index`, `tool_calls`, `refusal`,
/// `reasoning_content` or `logprobs` beside it when the answer has them.
pub use crate::choices::ChoiceDelta as Delta;

impl EventBody {
    /// The terminal event of a finished job: its kind follows the job's status.
    pub fn ended(job: JobView) -> Self {
        match job.status {
            JobStatus::Succeeded => EventBody::Succeeded(Box::new(job)),
            JobStatus::Cancelled => EventBody::Cancelled(Box::new(job)),
            _ => EventBody::Failed(Box::new(job)),
        }
    }

    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            EventBody::Queued(_) => "job.queued",
            EventBody::Started(_) => "job.started",
            EventBody::Delta(_) => "message.delta",
            EventBody::Succeeded(_) => "job.succeeded",
            EventBody::Failed(_) => "job.failed",
            EventBody::Cancelled(_) => "job.cancelled",
        }
    }

    /// The finished job, for a terminal event; after it a job emits nothing more.
    pub fn ended_job(&self) -> Option<&JobView> {
        match self {
            EventBody::Succeeded(job) | EventBody::Failed(job) | EventBody::Cancelled(job) => {
                Some(job)
            }
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.ended_job().is_some()
    }

    /// The `data` field alone, as JSON text (what an SSE client receives).
    pub fn data_json(&self) -> String {
        let data = match self {
            EventBody::Queued(data) => serde_json::to_string(data),
            EventBody::Started(data) => serde_json::to_string(data),
            EventBody::Delta(data) => serde_json::to_string(data),
            EventBody::Succeeded(job) | EventBody::Failed(job) | EventBody::Cancelled(job) => {
                serde_json::to_string(job)
            }
        };
        data.unwrap_or_else(|_| "{}".into())
    }
}

impl JobEvent {
    /// The JSON bytes published to NATS.
    pub fn to_bytes(&self) -> bytes::Bytes {
        // Plain data with string keys: serialising it cannot fail.
        serde_json::to_vec(self)
            .map(bytes::Bytes::from)
            .unwrap_or_default()
    }

    /// Reads an event published by [`JobEvent::to_bytes`]; `None` for anything else.
    pub fn from_bytes(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}

impl JobEvent {
    /// The terminal event of a job ended outside any attempt (cancelled while no worker held it,
    /// or read back from Postgres), numbered after every event its attempts could have emitted.
    pub fn ended_outside_attempt(job: JobRow) -> Self {
        Self {
            id: EventIds::after_attempts(job.event_attempts()),
            body: EventBody::ended(JobView::from(job)),
        }
    }
}

/// Publishes a job's event to its live subscribers. Events are a courtesy: Postgres holds the
/// durable record (and event hubs fall back to it), so a failed publish is logged, not retried.
pub async fn publish(nats: &async_nats::Client, topology: &Topology, job: JobId, event: &JobEvent) {
    if let Err(err) = nats
        .publish(topology.events_subject(job), event.to_bytes())
        .await
    {
        tracing::warn!(job_id = %job, error = %err, "could not publish a job event");
    }
}

/// Hands out the ids of one attempt's events, in order.
#[derive(Debug, Clone)]
pub struct EventIds {
    next: u64,
    end: u64,
}

impl EventIds {
    /// Ids for attempt `attempt` (1 for the first).
    pub fn for_attempt(attempt: u32) -> Self {
        let base = u64::from(attempt) * EVENTS_PER_ATTEMPT;
        Self {
            next: base + 1,
            end: base + EVENTS_PER_ATTEMPT,
        }
    }

    /// The id an event emitted outside an attempt takes after `attempts` attempts (a cancel of a
    /// job no worker holds, or a terminal event rebuilt from Postgres): after every id any of
    /// those attempts used.
    pub fn after_attempts(attempts: u32) -> u64 {
        (u64::from(attempts) + 1) * EVENTS_PER_ATTEMPT
    }

    /// The next id.
    #[expect(
        clippy::should_implement_trait,
        reason = "never exhausted: `next` keeps returning the last id when the range is used up"
    )]
    pub fn next(&mut self) -> u64 {
        let id = self.next;
        self.next = (self.next + 1).min(self.end);
        id
    }

    /// Whether only a few ids remain, so a worker should stop sending deltas one by one and keep
    /// the rest for the terminal event.
    pub fn nearly_exhausted(&self) -> bool {
        self.end - self.next < 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_attempts_sort_after_earlier_ones() {
        let mut first = EventIds::for_attempt(1);
        let a = first.next();
        let b = first.next();
        let mut second = EventIds::for_attempt(2);
        let c = second.next();
        assert!(0 < a && a < b && b < c);
        assert!(EventIds::after_attempts(2) > c);
    }

    #[test]
    fn events_travel_as_id_event_and_data() {
        let event = JobEvent {
            id: 7,
            body: EventBody::Delta(Delta::text("hi")),
        };
        let json: serde_json::Value = serde_json::from_slice(&event.to_bytes()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "event": "message.delta", "data": {"delta": "hi"}})
        );
        assert_eq!(JobEvent::from_bytes(&event.to_bytes()), Some(event.clone()));
        assert_eq!(event.body.data_json(), r#"{"delta":"hi"}"#);
        assert_eq!(event.body.name(), "message.delta");
        assert!(JobEvent::from_bytes(b"{\"id\":1,\"event\":\"job.unknown\"}").is_none());
    }
}
