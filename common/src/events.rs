//! The events a job emits, as they travel over NATS on `<namespace>.events.<job id>`.
//!
//! Event ids increase through a job's life and survive retries without coordination: attempt `k`
//! numbers its events from `k × 1,000,000 + 1`, so every event of a later attempt sorts after every
//! event of an earlier one. `job.queued` is id 0. Ids are not contiguous; clients only compare
//! them (`Last-Event-ID` resumes after the given id).

use serde::{Deserialize, Serialize};

/// Events one attempt may number; beyond this a worker coalesces deltas (see [`EventIds`]).
pub const EVENTS_PER_ATTEMPT: u64 = 1_000_000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "job.queued")]
    JobQueued,
    #[serde(rename = "job.started")]
    JobStarted,
    #[serde(rename = "message.delta")]
    MessageDelta,
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.cancelled")]
    JobCancelled,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::JobQueued => "job.queued",
            EventKind::JobStarted => "job.started",
            EventKind::MessageDelta => "message.delta",
            EventKind::JobSucceeded => "job.succeeded",
            EventKind::JobFailed => "job.failed",
            EventKind::JobCancelled => "job.cancelled",
        }
    }

    /// After a terminal event a job emits nothing more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::JobSucceeded | EventKind::JobFailed | EventKind::JobCancelled
        )
    }
}

/// One event on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub id: u64,
    pub event: EventKind,
    pub data: serde_json::Value,
}

impl JobEvent {
    /// The JSON bytes published to NATS.
    ///
    /// # Errors
    /// Never in practice: the event is plain JSON.
    pub fn to_bytes(&self) -> Result<bytes::Bytes, serde_json::Error> {
        serde_json::to_vec(self).map(bytes::Bytes::from)
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

    /// The id an event emitted by the ingress after `attempts` attempts takes (a cancel of a job
    /// no worker holds): after every id any of those attempts used.
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
    fn kinds_serialize_as_their_sse_names() {
        let event = JobEvent {
            id: 7,
            event: EventKind::MessageDelta,
            data: serde_json::json!({"delta": "hi"}),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains("\"message.delta\""), "{json}");
    }
}
