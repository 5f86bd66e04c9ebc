//! Event hubs: one replay and one log per job per ingress process, shared by every client of this
//! process that follows that job (SSE streams, streamed chat completions, waits). The live events
//! of every job come through one NATS subscription per process ([`live`]).
//!
//! A hub's log holds the job's events in id order: `job.queued` (id 0, made here), then whatever
//! the job's attempts published, ending with a terminal event that carries the job as committed.
//! It is filled by a [`pump`] task, which falls back to Postgres so that every follower's wait
//! ends when the job does, even if its events were lost.
//!
//! Clients read the log through a [`HubCursor`], each at its own pace: a slow client never slows
//! the others, and a late one starts from the beginning (or after its `Last-Event-ID`). The pump
//! stops when the last cursor of the job is dropped.

mod live;
mod log;
mod pump;
mod recheck;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use chatq_common::db::Db;
use chatq_common::events::JobView;
use chatq_common::ids::JobId;
use chatq_common::topology::Topology;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use self::live::LiveEvents;
use self::log::Log;
pub use self::log::{HubCursor, HubEvent, ResumingCursor};
use self::pump::Pump;
use self::recheck::Rechecks;

/// Why a hub could not follow a job.
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to the job's events")]
pub struct HubError(#[source] async_nats::SubscribeError);

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
    live: Arc<LiveEvents>,
    jetstream: async_nats::jetstream::Context,
    topology: Topology,
    pool: Db,
    pumps: TaskTracker,
    rechecks: Arc<Rechecks>,
}

impl EventHubs {
    /// Pumps run on `pumps`, beside the task that checks their jobs in Postgres until `stop`.
    pub fn new(
        nats: async_nats::Client,
        topology: Topology,
        pool: Db,
        pumps: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let rechecks = Arc::new(Rechecks::default());
        pumps.spawn(
            rechecks
                .clone()
                .run_until_stopped(pool.clone(), stop.clone()),
        );
        Self {
            hubs: Arc::default(),
            jetstream: async_nats::jetstream::new(nats.clone()),
            live: Arc::new(LiveEvents::new(nats, topology.clone(), pumps.clone(), stop)),
            topology,
            pool,
            pumps,
            rechecks,
        }
    }

    /// Follows a job's events. The caller has already checked that the job is the tenant's.
    /// Once this returns, no event the job emits later can be missed.
    ///
    /// # Errors
    /// NATS refuses the subscription.
    pub async fn follow(&self, job: JobId) -> Result<HubCursor, HubError> {
        self.follow_from(job, None).await
    }

    /// Follows a job this request has just recorded (`job`, as [`JobView::queued`] describes
    /// it) and not yet published: nothing can have happened to it yet, so its hub starts from
    /// `job.queued` without reading Postgres (one read less for every chat completion).
    ///
    /// # Errors
    /// NATS refuses the subscription.
    pub async fn follow_recorded(&self, job: JobView) -> Result<HubCursor, HubError> {
        self.follow_from(job.id, Some(job)).await
    }

    async fn follow_from(
        &self,
        job: JobId,
        recorded: Option<JobView>,
    ) -> Result<HubCursor, HubError> {
        if let Some(hub) = self.existing(job) {
            return Ok(HubCursor::new(hub));
        }
        // Subscribed before registering, so the live events flow before anyone relies on them.
        self.live.ready().await.map_err(HubError)?;
        let mut hubs = self
            .hubs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another request may have created it meanwhile; theirs wins.
        if let Some(hub) = hubs.get(&job).and_then(Weak::upgrade) {
            return Ok(HubCursor::new(hub));
        }
        // Under the registry's lock, so the job's one hub has the job's one route.
        let live = self.live.feed(job);
        let stop = CancellationToken::new();
        let log = Arc::new(Log::new());
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
            first_seen: recorded,
            floor: 0,
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
