//! Every job's live events reach this process through one NATS subscription (`<ns>.events.*`),
//! which hands each event to the pump of its job, if this process follows that job, and drops
//! the others.
//!
//! One subscription per job cost a SUB, a flush round trip and an UNSUB on the NATS connection
//! for every chat completion, and each subscription kept a channel of its own: about 6 KB for
//! every job followed, however idle. A followed job now costs an entry in a map and a channel of
//! event payloads. The price is that every ingress receives every job's events, followed here or
//! not (`nats/README.md`, "Job events").

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use chatq_common::ids::JobId;
use chatq_common::topology::Topology;
use futures::StreamExt;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where each followed job's events go: one feed per job (the pump of its hub).
type Routes = Mutex<HashMap<JobId, Route>>;

struct Route {
    /// Tells this route from a later one of the same job (see [`LiveFeed`]'s `Drop`).
    id: u64,
    events: mpsc::UnboundedSender<Bytes>,
}

/// The subscription to every job's events, made on first use.
pub(super) struct LiveEvents {
    nats: async_nats::Client,
    topology: Topology,
    routes: Arc<Routes>,
    subscribed: OnceCell<()>,
    next_id: AtomicU64,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl LiveEvents {
    /// The subscription's task runs on `tasks` until `stop`.
    pub(super) fn new(
        nats: async_nats::Client,
        topology: Topology,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            nats,
            topology,
            routes: Arc::default(),
            subscribed: OnceCell::new(),
            next_id: AtomicU64::new(0),
            tasks,
            stop,
        }
    }

    /// Makes the subscription, unless it is made already (a failed attempt is tried again on
    /// the next call).
    ///
    /// # Errors
    /// NATS refuses the subscription.
    pub(super) async fn ready(&self) -> Result<(), async_nats::SubscribeError> {
        self.subscribed.get_or_try_init(|| self.subscribe()).await?;
        Ok(())
    }

    /// The live events of `job` from now on (once [`Self::ready`]), until the feed is dropped.
    /// It takes over the job's route from any earlier feed: the caller makes one feed per hub,
    /// and a job has one hub at a time.
    pub(super) fn feed(&self, job: JobId) -> LiveFeed {
        let (events, receiver) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.routes).insert(job, Route { id, events });
        LiveFeed {
            job,
            id,
            receiver,
            routes: self.routes.clone(),
        }
    }

    async fn subscribe(&self) -> Result<(), async_nats::SubscribeError> {
        let mut subscription = self
            .nats
            .subscribe(self.topology.all_events_subject())
            .await?;
        // A flush round trip guarantees the server has registered the subscription before any
        // job followed through it is published.
        if let Err(err) = self.nats.flush().await {
            tracing::debug!(error = %err, "flush after subscribing to job events failed");
        }
        let routes = self.routes.clone();
        let topology = self.topology.clone();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            loop {
                let message = tokio::select! {
                    message = subscription.next() => message,
                    () = stop.cancelled() => None,
                };
                let Some(message) = message else { break };
                let Some(job) = topology.job_of_events_subject(&message.subject) else {
                    continue;
                };
                if let Some(route) = lock(&routes).get(&job) {
                    // A feed dropped meanwhile is removed by its `Drop`; nothing to do here.
                    drop(route.events.send(message.payload));
                }
            }
        });
        Ok(())
    }
}

fn lock(routes: &Routes) -> MutexGuard<'_, HashMap<JobId, Route>> {
    routes.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One followed job's live events (their payloads), in the order NATS delivered them.
pub(super) struct LiveFeed {
    job: JobId,
    id: u64,
    receiver: mpsc::UnboundedReceiver<Bytes>,
    routes: Arc<Routes>,
}

impl LiveFeed {
    /// The next event; `None` only once the subscription has ended (this process is stopping).
    pub(super) async fn next(&mut self) -> Option<Bytes> {
        self.receiver.recv().await
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        // Only its own route: a hub for the same job made after this one's last follower left
        // may have routed the job to its own feed already.
        let mut routes = lock(&self.routes);
        if routes
            .get(&self.job)
            .is_some_and(|route| route.id == self.id)
        {
            routes.remove(&self.job);
        }
    }
}
