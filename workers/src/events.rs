//! Publishing one attempt's events to `<namespace>.events.<job id>`, numbered in order.
//!
//! Events are a courtesy to live subscribers: Postgres holds the durable record, so a failed
//! publish is logged and the job carries on.

use async_nats::Client;
use chatq_common::events::{self, Delta, EventBody, EventIds, JobEvent, Started};
use chatq_common::ids::JobId;
use chatq_common::job::view::JobView;
use chatq_common::reply_cache::CacheTier;
use chatq_common::topology::Topology;

/// The events of one attempt of one job.
#[derive(Debug)]
pub struct AttemptEvents {
    client: Client,
    topology: Topology,
    ids: EventIds,
    job_id: JobId,
}

impl AttemptEvents {
    /// `attempt` counts every attempt the job has had, including those before a retry from the
    /// dead letters, so ids keep increasing.
    pub fn new(client: Client, topology: &Topology, job_id: JobId, attempt: u32) -> Self {
        Self {
            client,
            topology: topology.clone(),
            ids: EventIds::for_attempt(attempt),
            job_id,
        }
    }

    async fn emit(&mut self, body: EventBody) {
        let event = JobEvent {
            id: self.ids.next(),
            body,
        };
        events::publish(&self.client, &self.topology, self.job_id, &event).await;
    }

    /// `job.started`, for attempt number `attempt` of this delivery's claim; `cache` names the
    /// tier when the reply comes from the reply cache.
    pub async fn started(&mut self, attempt: u32, cache: Option<CacheTier>) {
        let job_id = self.job_id;
        self.emit(EventBody::Started(Started {
            job_id,
            attempt,
            cached: cache.is_some(),
            cache,
        }))
        .await;
    }

    /// A piece of the reply.
    pub async fn delta(&mut self, delta: &Delta) {
        self.emit(EventBody::Delta(delta.clone())).await;
    }

    /// The terminal event: the job as its commit left it.
    pub async fn ended(&mut self, job: JobView) {
        self.emit(EventBody::ended(job)).await;
    }

    /// Whether deltas should be merged from now on, to keep ids for the terminal event.
    pub fn should_coalesce(&self) -> bool {
        self.ids.nearly_exhausted()
    }
}
