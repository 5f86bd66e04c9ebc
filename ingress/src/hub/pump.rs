//! The task that fills one job's log: Postgres first, then the events stream, then live events,
//! with Postgres again as the fallback that makes every follower's wait end.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use chatq_common::db::jobs::{self, JobRow};
use chatq_common::events::{Delta, EventBody, EventIds, JobEvent, JobView, Queued};
use chatq_common::ids::JobId;
use chatq_common::job::JobStatus;
use chatq_common::job::view::JobErrorView;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::EventHubs;
use super::live::LiveFeed;
use super::log::{HubEvent, Log};

/// Fills one hub's log.
pub(super) struct Pump {
    pub(super) job: JobId,
    pub(super) log: Arc<Log>,
    pub(super) live: LiveFeed,
    pub(super) hubs: EventHubs,
    /// The job as first read, to describe it if it is deleted while followed; given when the
    /// hub was made for a job this process has just recorded and not yet published, which is
    /// queued with no earlier events, so Postgres is not read first.
    pub(super) first_seen: Option<JobView>,
    /// Events at or below this id belong to the job's life before an operator retried it (its
    /// old terminal event among them), and are not this life's.
    pub(super) floor: u64,
}

impl Pump {
    pub(super) async fn run(mut self, stop: CancellationToken) {
        tokio::select! {
            () = self.fill() => {}
            () = stop.cancelled() => {}
        }
    }

    /// 1. Read the job from Postgres (unless it was just recorded here); if an attempt has
    ///    already started, replay its earlier events from the events stream (an ordered
    ///    consumer, read until caught up).
    /// 2. Append live events, skipping any id already logged, until a terminal event.
    /// 3. When Postgres has the job ended or gone ([`super::recheck`] looks every few seconds): a
    ///    job that ended while its events were lost (NATS down, replay window over) gets its
    ///    terminal event from Postgres, and a job deleted meanwhile (with its conversation) a
    ///    `job.failed` saying so, so no follower waits forever.
    async fn fill(&mut self) {
        if let Some(recorded) = &self.first_seen {
            let queued = self.queued(recorded.created_at);
            self.log.append(HubEvent::new(0, EventBody::Queued(queued)));
        } else if !Box::pin(self.catch_up()).await {
            return;
        }
        self.follow_live().await;
    }

    fn queued(&self, created_at: i64) -> Queued {
        Queued {
            job_id: self.job,
            status: JobStatus::Queued,
            created_at,
        }
    }

    /// Logs what the job did before it was followed; returns whether it is still to end.
    async fn catch_up(&mut self) -> bool {
        let stored = Box::pin(jobs::get_any(&self.hubs.pool, self.job))
            .await
            .ok()
            .flatten();
        let Some(stored) = stored else {
            self.end_gone();
            return false;
        };
        self.first_seen = Some(JobView::from(stored.clone()));
        if stored.earlier_attempts > 0 {
            self.floor =
                EventIds::after_attempts(u32::try_from(stored.earlier_attempts).unwrap_or(0));
        }
        let queued = self.queued(stored.created_at.unix_timestamp());
        self.log.append(HubEvent::new(0, EventBody::Queued(queued)));
        if stored.attempts > 0 || stored.status().is_terminal() {
            // Boxed, like the other one-off steps of this task: inline, their futures (JetStream,
            // Postgres) would stay in the task's size for as long as it follows the job (10 KB
            // per job followed, instead of 3).
            Box::pin(self.replay()).await;
        }
        if self.log.ended() {
            return false;
        }
        if stored.status().is_terminal() {
            self.end_from(stored);
            return false;
        }
        true
    }

    /// Appends live events until the job ends (by its terminal event, or as Postgres has it).
    async fn follow_live(&mut self) {
        let watched = self.hubs.rechecks.watch(self.job);
        loop {
            tokio::select! {
                payload = self.live.next() => {
                    let Some(payload) = payload else { return };
                    if let Some(event) = JobEvent::from_bytes(&payload) {
                        self.append(event);
                    }
                }
                () = watched.nudged() => Box::pin(self.recheck()).await,
            }
            if self.log.ended() {
                return;
            }
        }
    }

    async fn recheck(&mut self) {
        match jobs::get_any(&self.hubs.pool, self.job).await {
            Ok(Some(job)) if job.status().is_terminal() => {
                // Give a terminal event in flight a moment to arrive with its real id.
                let drained =
                    tokio::time::timeout(Duration::from_millis(500), self.drain_live()).await;
                if drained.is_err() || !self.log.ended() {
                    self.end_from(job);
                }
            }
            Ok(None) => self.end_gone(),
            // Still running, or Postgres unreachable: look again at the next tick.
            Ok(Some(_)) | Err(_) => {}
        }
    }

    /// Appends what the live subscription already holds, until it ends the job.
    async fn drain_live(&mut self) {
        while let Some(payload) = self.live.next().await {
            if let Some(event) = JobEvent::from_bytes(&payload) {
                self.append(event);
            }
            if self.log.ended() {
                return;
            }
        }
    }

    fn append(&self, event: JobEvent) {
        if event.id <= self.floor || self.log.last_id().is_some_and(|last| event.id <= last) {
            return;
        }
        self.log.append(HubEvent::new(event.id, event.body));
    }

    /// Reads the job's earlier events back from the events stream.
    async fn replay(&self) {
        let topology = &self.hubs.topology;
        let Ok(stream) = self
            .hubs
            .jetstream
            .get_stream(topology.events_stream())
            .await
        else {
            return;
        };
        let config = OrderedConfig {
            filter_subject: topology.events_subject(self.job),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let Ok(mut consumer) = stream.create_consumer(config).await else {
            return;
        };
        let pending = consumer
            .info()
            .await
            .map(|info| info.num_pending)
            .unwrap_or(0);
        if pending == 0 {
            return;
        }
        let Ok(mut messages) = consumer.messages().await else {
            return;
        };
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        {
            if let Some(event) = JobEvent::from_bytes(&message.payload) {
                self.append(event);
            }
            let caught_up = message.info().map(|info| info.pending == 0).unwrap_or(true);
            if caught_up || self.log.ended() {
                return;
            }
        }
    }

    /// Ends the log from what Postgres holds: the reply as one delta per choice (for a client
    /// that has seen nothing of it) and the terminal event.
    fn end_from(&self, job: JobRow) {
        let mut ids = EventIds::for_attempt(job.event_attempts());
        let ended = JobEvent::ended_outside_attempt(job);
        let reply = ended.body.ended_job().and_then(|job| job.reply.as_ref());
        // Only for a client that saw nothing of the last attempt (not even its start).
        let first = ids.clone().next();
        if let Some(reply) = reply
            && self.log.last_id().is_none_or(|last| first > last)
        {
            let deltas: Vec<Delta> = if reply.choices.is_empty() {
                vec![Delta::text(reply.content.clone())]
            } else {
                reply.choices.iter().map(|c| c.as_delta()).collect()
            };
            for delta in deltas.into_iter().filter(|d| !d.is_empty()) {
                self.log
                    .append(HubEvent::new(ids.next(), EventBody::Delta(delta)));
            }
        }
        self.append(ended);
    }

    /// Ends the log of a job that no longer exists (deleted with its conversation).
    fn end_gone(&self) {
        let mut job = self.first_seen.clone().unwrap_or_else(|| JobView {
            id: self.job,
            object: "job".into(),
            status: JobStatus::Failed,
            lane: String::new(),
            model: String::new(),
            conversation_id: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            attempts: 0,
            queued_ms: None,
            ttft_ms: None,
            upstream_ms: None,
            reply: None,
            error: None,
        });
        job.status = JobStatus::Failed;
        job.reply = None;
        job.error = Some(JobErrorView {
            kind: "not_found".into(),
            message: "the job no longer exists (its conversation was deleted)".into(),
        });
        let id = EventIds::after_attempts(u32::try_from(job.attempts).unwrap_or(0));
        let id = self.log.last_id().map_or(id, |last| id.max(last + 1));
        self.log.append(HubEvent::new(id, EventBody::ended(job)));
    }
}
