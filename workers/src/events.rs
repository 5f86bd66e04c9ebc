//! Publishing one attempt's events to `<namespace>.events.<job id>`.
//!
//! Events are a courtesy to live subscribers: Postgres holds the durable record, so a failed
//! publish is logged and the job carries on.

use async_nats::Client;
use chatq_common::events::{EventIds, EventKind, JobEvent};
use chatq_common::ids::JobId;
use chatq_common::topology::Topology;
use serde_json::{Value, json};

/// The events of one attempt of one job, numbered in order.
#[derive(Debug)]
pub struct AttemptEvents {
    client: Client,
    subject: String,
    ids: EventIds,
    job_id: JobId,
}

impl AttemptEvents {
    pub fn new(client: Client, topology: &Topology, job_id: JobId, attempt: u32) -> Self {
        Self {
            client,
            subject: topology.events_subject(job_id),
            ids: EventIds::for_attempt(attempt),
            job_id,
        }
    }

    pub async fn emit(&mut self, event: EventKind, data: Value) {
        let event = JobEvent {
            id: self.ids.next(),
            event,
            data,
        };
        let Ok(payload) = event.to_bytes() else {
            return;
        };
        if let Err(err) = self.client.publish(self.subject.clone(), payload).await {
            tracing::warn!(job_id = %self.job_id, error = %err, "could not publish a job event");
        }
    }

    /// A piece of the reply, as `{"delta": "..."}`.
    pub async fn delta(&mut self, text: &str) {
        self.emit(EventKind::MessageDelta, json!({ "delta": text }))
            .await;
    }

    /// Whether deltas should be merged from now on, to keep ids for the terminal event.
    pub fn should_coalesce(&self) -> bool {
        self.ids.nearly_exhausted()
    }
}
