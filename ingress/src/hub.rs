//! Event hubs: one NATS subscription, one replay and one log per job per ingress process, shared
//! by every client of this process that follows that job.
//!
//! A hub's log holds the job's events in id order: `job.queued` (id 0, made here), then whatever
//! the job's attempts published. It is filled by a pump task:
//!
//! 1. subscribe to `<ns>.events.<job>` (live events from now on are buffered by the subscription);
//! 2. read the job from Postgres; if an attempt has already started, replay its earlier events
//!    from the events stream (an ordered consumer, read until caught up);
//! 3. append live events, skipping any id already in the log, until a terminal event; a terminal
//!    event's data is replaced by the job as stored, so it carries the whole reply;
//! 4. every few seconds, check Postgres: a job that ended while its events were lost (NATS down,
//!    replay window over) gets its terminal event from Postgres, so no client waits forever.
//!
//! Clients read the log through a [`HubCursor`], each at its own pace: a slow client never slows
//! the others, and a late one starts from the beginning (or after its `Last-Event-ID`). The pump
//! stops when the last cursor of the job is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use chatq_common::db::jobs::{self, JobRow};
use chatq_common::events::{EventIds, EventKind, JobEvent};
use chatq_common::ids::JobId;
use chatq_common::job::JobStatus;
use chatq_common::topology::Topology;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::views::JobView;

/// How often a hub checks Postgres for a job that ended without a terminal event reaching it.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// One event as clients receive it; `data` is JSON text, serialised once for every client.
#[derive(Debug)]
pub struct HubEvent {
    pub id: u64,
    pub kind: EventKind,
    pub data: String,
}

/// Why a hub could not follow a job.
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to the job's events")]
pub struct HubError(#[source] async_nats::SubscribeError);

/// Log length and whether the job has ended, broadcast to cursors.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    events: usize,
    ended: bool,
}

struct Log {
    events: RwLock<Vec<Arc<HubEvent>>>,
    progress: watch::Sender<Progress>,
}

impl Log {
    fn last_id(&self) -> Option<u64> {
        self.events.read().ok()?.last().map(|e| e.id)
    }

    /// Appends an event if it comes after everything logged; returns whether it did.
    fn append(&self, event: HubEvent) -> bool {
        let Ok(mut events) = self.events.write() else {
            return false;
        };
        if events.last().is_some_and(|last| last.id >= event.id) {
            return false;
        }
        let ended = event.kind.is_terminal();
        events.push(Arc::new(event));
        let len = events.len();
        drop(events);
        self.progress.send_modify(|p| {
            p.events = len;
            p.ended |= ended;
        });
        true
    }

    fn ended(&self) -> bool {
        self.progress.borrow().ended
    }

    fn get(&self, index: usize) -> Option<Arc<HubEvent>> {
        self.events.read().ok()?.get(index).cloned()
    }

    /// Index of the first event with an id above `after`.
    fn position_after(&self, after: u64) -> usize {
        self.events
            .read()
            .map(|events| events.partition_point(|e| e.id <= after))
            .unwrap_or(0)
    }
}

/// A job's hub. Cursors hold it; when the last one goes, its pump stops.
pub struct JobHub {
    job: JobId,
    log: Arc<Log>,
    registry: Weak<Mutex<HashMap<JobId, Weak<JobHub>>>>,
    _stop_pump: DropGuard,
}

impl Drop for JobHub {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade()
            && let Ok(mut hubs) = registry.lock()
            && hubs
                .get(&self.job)
                .is_some_and(|weak| weak.strong_count() == 0)
        {
            hubs.remove(&self.job);
        }
    }
}

/// Every hub of this process.
#[derive(Clone)]
pub struct EventHubs {
    hubs: Arc<Mutex<HashMap<JobId, Weak<JobHub>>>>,
    nats: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    topology: Topology,
    pool: sqlx::PgPool,
    pumps: TaskTracker,
}

impl EventHubs {
    pub fn new(
        nats: async_nats::Client,
        topology: Topology,
        pool: sqlx::PgPool,
        pumps: TaskTracker,
    ) -> Self {
        Self {
            hubs: Arc::default(),
            jetstream: async_nats::jetstream::new(nats.clone()),
            nats,
            topology,
            pool,
            pumps,
        }
    }

    /// Follows a job's events. The caller has already checked that the job is the tenant's.
    /// Once this returns, no event the job emits later can be missed.
    ///
    /// # Errors
    /// NATS refuses the subscription.
    pub async fn follow(&self, job: JobId) -> Result<HubCursor, HubError> {
        if let Some(hub) = self.existing(job) {
            return Ok(HubCursor::new(hub));
        }
        // Subscribe before registering, so the subscription exists before anyone can rely on it.
        let live = self
            .nats
            .subscribe(self.topology.events_subject(job))
            .await
            .map_err(HubError)?;
        // A flush round trip guarantees the server has registered the subscription.
        if let Err(err) = self.nats.flush().await {
            tracing::debug!(error = %err, "flush after subscribing failed");
        }
        let mut hubs = self
            .hubs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another request may have created it meanwhile; theirs wins, ours is dropped.
        if let Some(hub) = hubs.get(&job).and_then(Weak::upgrade) {
            return Ok(HubCursor::new(hub));
        }
        let stop = CancellationToken::new();
        let (progress, _) = watch::channel(Progress::default());
        let log = Arc::new(Log {
            events: RwLock::new(Vec::new()),
            progress,
        });
        let hub = Arc::new(JobHub {
            job,
            log: log.clone(),
            registry: Arc::downgrade(&self.hubs),
            _stop_pump: stop.clone().drop_guard(),
        });
        hubs.insert(job, Arc::downgrade(&hub));
        drop(hubs);
        let pump = Pump {
            job,
            log,
            live,
            hubs: self.clone(),
        };
        self.pumps.spawn(pump.run(stop));
        Ok(HubCursor::new(hub))
    }

    fn existing(&self, job: JobId) -> Option<Arc<JobHub>> {
        self.hubs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&job)
            .and_then(Weak::upgrade)
    }
}

/// One client's position in a job's log.
pub struct HubCursor {
    hub: Arc<JobHub>,
    next: usize,
    progress: watch::Receiver<Progress>,
}

impl HubCursor {
    fn new(hub: Arc<JobHub>) -> Self {
        let progress = hub.log.progress.subscribe();
        Self {
            hub,
            next: 0,
            progress,
        }
    }

    /// Skips every event up to and including `after` (a `Last-Event-ID`), now and as they
    /// arrive; `None` skips nothing.
    pub fn resume(mut self, after: Option<u64>) -> ResumingCursor {
        if let Some(id) = after {
            self.next = self.hub.log.position_after(id);
        }
        ResumingCursor {
            cursor: self,
            after,
        }
    }

    /// The next event, waiting for it if needed; `None` once the job has ended and every event
    /// was read.
    pub async fn next(&mut self) -> Option<Arc<HubEvent>> {
        loop {
            let progress = *self.progress.borrow_and_update();
            if self.next < progress.events {
                let event = self.hub.log.get(self.next)?;
                self.next += 1;
                return Some(event);
            }
            if progress.ended {
                return None;
            }
            if self.progress.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// A cursor that never yields an event with an id at or below `after`.
pub struct ResumingCursor {
    cursor: HubCursor,
    after: Option<u64>,
}

impl ResumingCursor {
    pub async fn next(&mut self) -> Option<Arc<HubEvent>> {
        loop {
            let event = self.cursor.next().await?;
            if self.after.is_none_or(|after| event.id > after) {
                return Some(event);
            }
        }
    }
}

/// Fills one hub's log.
struct Pump {
    job: JobId,
    log: Arc<Log>,
    live: async_nats::Subscriber,
    hubs: EventHubs,
}

impl Pump {
    async fn run(mut self, stop: CancellationToken) {
        tokio::select! {
            () = self.fill() => {}
            () = stop.cancelled() => {}
        }
        drop(Box::pin(self.live.unsubscribe()).await);
    }

    async fn fill(&mut self) {
        let stored = Box::pin(jobs::get_any(&self.hubs.pool, self.job))
            .await
            .ok()
            .flatten();
        let Some(stored) = stored else {
            // Deleted (with its conversation): nothing will come.
            self.append_terminal_from(None);
            return;
        };
        self.log.append(HubEvent {
            id: 0,
            kind: EventKind::JobQueued,
            data: json!({ "job_id": self.job, "status": JobStatus::Queued, "created_at": stored.created_at.unix_timestamp() })
                .to_string(),
        });
        if stored.attempts > 0 || stored.status().is_terminal() {
            // Boxed, like the other one-off steps of this task: inline, their futures (JetStream,
            // Postgres) would stay in the task's size for as long as it follows the job (10 KB
            // per job followed, instead of 3).
            Box::pin(self.replay()).await;
        }
        if self.log.ended() {
            return;
        }
        if stored.status().is_terminal() && !self.replay_has_terminal() {
            self.append_terminal_from(Some(stored));
            return;
        }
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.tick().await;
        loop {
            tokio::select! {
                message = self.live.next() => {
                    let Some(message) = message else { return };
                    if let Ok(event) = serde_json::from_slice::<JobEvent>(&message.payload) {
                        Box::pin(self.append(event)).await;
                    }
                }
                _ = recheck.tick() => {
                    if let Ok(Some(job)) = Box::pin(jobs::get_any(&self.hubs.pool, self.job)).await
                        && job.status().is_terminal()
                    {
                        // Give a terminal event in flight a moment to arrive with its real id.
                        if tokio::time::timeout(Duration::from_millis(500), Box::pin(self.drain_live())).await.is_err()
                            || !self.log.ended()
                        {
                            self.append_terminal_from(Some(job));
                        }
                    }
                }
            }
            if self.log.ended() {
                return;
            }
        }
    }

    /// Appends what the live subscription already holds, until it ends the job.
    async fn drain_live(&mut self) {
        while let Some(message) = self.live.next().await {
            if let Ok(event) = serde_json::from_slice::<JobEvent>(&message.payload) {
                self.append(event).await;
            }
            if self.log.ended() {
                return;
            }
        }
    }

    fn replay_has_terminal(&self) -> bool {
        self.log.ended()
    }

    async fn append(&self, event: JobEvent) {
        if self.log.last_id().is_some_and(|last| event.id <= last) {
            return;
        }
        let data = if event.event.is_terminal() {
            // The stored job is the whole truth (reply, usage, timings, error).
            match jobs::get_any(&self.hubs.pool, self.job).await {
                Ok(Some(job)) if job.status().is_terminal() => job_data(job),
                _ => event.data.to_string(),
            }
        } else {
            event.data.to_string()
        };
        self.log.append(HubEvent {
            id: event.id,
            kind: event.event,
            data,
        });
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
            if let Ok(event) = serde_json::from_slice::<JobEvent>(&message.payload) {
                self.append(event).await;
            }
            let caught_up = message.info().map(|info| info.pending == 0).unwrap_or(true);
            if caught_up || self.log.ended() {
                return;
            }
        }
    }

    /// Ends the log from what Postgres holds: the reply as one delta (for a client that has seen
    /// nothing of it) and the terminal event.
    fn append_terminal_from(&self, job: Option<JobRow>) {
        let Some(job) = job else {
            self.log.append(HubEvent {
                id: EventIds::after_attempts(0),
                kind: EventKind::JobFailed,
                data: json!({ "job_id": self.job, "status": JobStatus::Failed,
                              "error": { "type": "not_found", "message": "the job no longer exists" } })
                    .to_string(),
            });
            return;
        };
        let attempts = job.event_attempts();
        let status = job.status();
        if let (JobStatus::Succeeded, Some(content)) = (status, job.reply_content.as_deref())
            && !content.is_empty()
        {
            self.log.append(HubEvent {
                id: EventIds::for_attempt(attempts).next(),
                kind: EventKind::MessageDelta,
                data: json!({ "delta": content }).to_string(),
            });
        }
        let kind = match status {
            JobStatus::Succeeded => EventKind::JobSucceeded,
            JobStatus::Cancelled => EventKind::JobCancelled,
            _ => EventKind::JobFailed,
        };
        self.log.append(HubEvent {
            id: EventIds::after_attempts(attempts),
            kind,
            data: job_data(job),
        });
    }
}

fn job_data(job: JobRow) -> String {
    serde_json::to_string(&JobView::from(job)).unwrap_or_else(|_| "{}".into())
}
