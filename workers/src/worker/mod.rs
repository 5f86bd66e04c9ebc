//! The worker loop: pull jobs with bounded concurrency, interactive lane first, run each with
//! [`process_one`] in its [`job_span`] (the trace of the request that created it, from the
//! message's `traceparent` header), and settle its message by outcome.
//!
//! The loop only pulls as many jobs as it has free slots, so nothing waits in a local buffer while
//! its ack deadline runs: an interactive job that arrives while batch jobs are queued is pulled
//! before any batch job that was not already running, into one of the slots kept for the front
//! of the interactive lane (an eighth) if the others are busy.
//!
//! - this module: building a worker, and its run with the drain phases of a shutdown;
//! - [`pull`]: the pull requests that fill free slots (a long poll that fills is followed at once);
//! - [`answers`]: what a pull request yields, as that loop reads it;
//! - [`settle`]: running each delivered job and settling its message by outcome;
//! - [`status`]: the heartbeat a worker reports, following the fleet's grants, and `/metrics`.

mod answers;
mod pull;
mod settle;
mod status;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use chatq_common::Settings;
use chatq_common::db::Db;
use chatq_common::job::Lane;
use chatq_common::topology::Topology;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::ReplyCache;
use crate::cancel::{self, CancelSwitches};
use crate::fleet::Fleet;
use crate::history::HistoryWindows;
use crate::limits::{LimitedProvider, ProviderLimits};
use crate::process::JobContext;
use crate::provider::{self, Provider};
use crate::reconciler::Reconciler;
use crate::retention::Sweeper;
use crate::webhooks::Dispatcher;
use crate::writes::JobWrites;

use self::pull::{MAX_PULL, acquire, reserved_for_front};
use self::status::{follow_fleet, hostname, register_series, serve_metrics};

/// A worker process's job runner.
pub struct Worker {
    ctx: Arc<JobContext>,
    consumers: Vec<(Lane, PullConsumer)>,
    reconciler: Reconciler,
    sweeper: Sweeper,
    /// Sends completion webhooks from the outbox, in slots of its own.
    webhooks: Dispatcher,
    /// This worker's share of the provider limits; its slots bound how many jobs it runs.
    limits: Arc<ProviderLimits>,
    /// Taken by `run_until_stopped`, which heartbeats until shutdown.
    fleet: Option<Fleet>,
    /// Jobs finished since start, for heartbeats.
    processed: Arc<AtomicU64>,
    /// The batched claim and reply writers, stopped once the last job has ended.
    writers: TaskTracker,
    writers_stop: CancellationToken,
}

impl Worker {
    /// Connects the provider and the lane consumers, handing each part of the worker the group
    /// of settings it uses. Expects the topology to exist (every role ensures it at start-up).
    ///
    /// # Errors
    /// The provider settings are unusable or the consumers cannot be found.
    pub async fn build(
        settings: &Settings,
        pool: Db,
        nats: async_nats::Client,
    ) -> anyhow::Result<Self> {
        let provider: Arc<dyn Provider> = provider::from_settings(
            &settings.provider,
            &settings.simulated,
            settings.worker.concurrency,
        )?;
        Self::with_provider(settings, pool, nats, provider).await
    }

    /// Like [`Worker::build`], with a provider chosen by the caller.
    ///
    /// # Errors
    /// The consumers cannot be found.
    pub async fn with_provider(
        settings: &Settings,
        pool: Db,
        nats: async_nats::Client,
        provider: Arc<dyn Provider>,
    ) -> anyhow::Result<Self> {
        let jetstream = async_nats::jetstream::new(nats.clone());
        let topology = Topology::new(&settings.nats);
        let mut consumers = Vec::new();
        for lane in Lane::ALL {
            for name in topology.lane_consumer_names(lane) {
                let consumer = topology
                    .named_consumer(&jetstream, &name)
                    .await
                    .map_err(|err| anyhow::anyhow!(err))
                    .with_context(|| format!("cannot open the consumer {name}"))?;
                consumers.push((lane, consumer));
            }
        }
        let worker_id = format!(
            "{}-{}",
            hostname(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        chatq_common::metrics::install();
        register_series(&settings.limits);
        let limits = ProviderLimits::new(&settings.limits, settings.worker.concurrency);
        let provider: Arc<dyn Provider> = Arc::new(LimitedProvider::new(provider, limits.clone()));
        let fleet = Fleet::join(
            &jetstream,
            &topology,
            &worker_id,
            &settings.limits,
            limits.slots().clone(),
        )
        .await
        .context("cannot open the workers and leases buckets")?;
        let writers = TaskTracker::new();
        let writers_stop = CancellationToken::new();
        let writes = JobWrites::start(
            pool.clone(),
            worker_id.clone(),
            topology.ack_wait().as_secs_f64(),
            HistoryWindows::new(
                settings.cache.history_bytes,
                settings.limits.history_max_messages,
            ),
            settings.limits.tenant_max_jobs_in_flight,
            &writers,
            writers_stop.clone(),
        );
        let cache = ReplyCache::open(
            &settings.cache,
            &jetstream,
            &topology,
            provider.clone(),
            pool.clone(),
            &worker_id,
        )
        .await?;
        let ctx = Arc::new(JobContext {
            cache,
            writes,
            worker_id,
            pool,
            nats,
            jetstream,
            topology,
            provider,
            worker: settings.worker.clone(),
            limits: settings.limits.clone(),
            max_attempts: settings.nats.job_max_attempts,
            cancels: Arc::new(CancelSwitches::default()),
        });
        let reconciler = Reconciler::new(ctx.clone());
        let sweeper = Sweeper::new(ctx.pool.clone(), settings.retention.clone());
        let webhooks = Dispatcher::new(ctx.pool.clone(), settings.webhooks.clone())
            .context("cannot build the webhook delivery client")?;
        Ok(Self {
            ctx,
            consumers,
            reconciler,
            sweeper,
            webhooks,
            limits,
            fleet: Some(fleet),
            processed: Arc::default(),
            writers,
            writers_stop,
        })
    }

    pub fn id(&self) -> &str {
        &self.ctx.worker_id
    }

    /// Runs until `shutdown` is cancelled, then drains (see the phases below).
    ///
    /// # Errors
    /// NATS refuses the subscription to cancel requests; pull errors are logged and retried.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = &self.ctx.worker;
        let concurrency = settings.concurrency.max(1);
        tracing::info!(
            worker = %self.ctx.worker_id,
            concurrency,
            provider = %self.ctx.provider.describe(),
            "worker pulling jobs"
        );
        let slots = self.limits.slots().clone();
        let jobs = TaskTracker::new();
        // Cancelled when the grace period runs out: jobs still running hand themselves back.
        let hand_back = CancellationToken::new();
        // Background tasks serve the jobs until the last one has ended.
        let background_stop = CancellationToken::new();
        let background = TaskTracker::new();
        // Listen for cancels before the first job is pulled, so none is missed.
        let cancel_notices = self
            .ctx
            .nats
            .subscribe(self.ctx.topology.cancel_subjects())
            .await
            .context("cannot subscribe to cancel requests")?;
        background.spawn(cancel::listen(
            cancel_notices,
            self.ctx.cancels.clone(),
            background_stop.clone(),
        ));
        if let Some(cache) = &self.ctx.cache {
            let evictions = self
                .ctx
                .nats
                .subscribe(self.ctx.topology.cache_evict_subject())
                .await
                .context("cannot subscribe to cache evictions")?;
            background.spawn(crate::cache::listen_evictions(
                cache.clone(),
                evictions,
                background_stop.clone(),
            ));
        }
        background.spawn(
            self.reconciler
                .clone()
                .run_until_stopped(background_stop.clone()),
        );
        background.spawn(
            self.sweeper
                .clone()
                .run_until_stopped(background_stop.clone()),
        );
        background.spawn(
            self.webhooks
                .clone()
                .run_until_stopped(background_stop.clone()),
        );
        // Take this worker's share of the provider limits, and follow the fleet as it changes.
        if let Some(mut fleet) = self.fleet.take() {
            let status = self.status_reporter(&jobs);
            fleet.introduce(&status()).await;
            background.spawn(follow_fleet(
                fleet.membership(),
                fleet.grants(),
                self.limits.clone(),
                self.ctx.limits.provider_max_concurrency,
                background_stop.clone(),
            ));
            background.spawn(
                fleet.run_until_stopped(self.status_reporter(&jobs), background_stop.clone()),
            );
        }
        if let Some(addr) = settings.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (CHATQ_WORKER_METRICS_ADDR)"))?;
            tracing::info!(addr = %listener.local_addr()?, "worker metrics at http://{addr}/metrics");
            background.spawn(serve_metrics(listener, background_stop.clone()));
        }

        while let Some(first) = acquire(&slots, &shutdown).await {
            let mut free = vec![first];
            while free.len() < MAX_PULL {
                match slots.try_acquire() {
                    Some(slot) => free.push(slot),
                    None => break,
                }
            }
            let reserved = reserved_for_front(slots.limit());
            if let Err(err) = self
                .pull_into(&mut free, reserved, &jobs, &hand_back, &shutdown)
                .await
            {
                tracing::warn!(error = %err, "cannot pull jobs from NATS; retrying in a second");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }

        // Phase 1: stop pulling (done: the loop above has ended). Phase 2: let running jobs
        // finish within the grace period. Phase 3: hand back what is still running; each job
        // releases its claim and asks for redelivery, so another worker picks it up at once.
        let grace = Duration::from_secs(settings.shutdown_grace_secs);
        jobs.close();
        tracing::info!(
            running = jobs.len(),
            grace_secs = grace.as_secs(),
            "worker stopping: draining running jobs"
        );
        if tokio::time::timeout(grace, jobs.wait()).await.is_err() {
            tracing::warn!(
                running = jobs.len(),
                "grace period over: handing the remaining jobs back"
            );
            hand_back.cancel();
            jobs.wait().await;
        }
        // Phase 4: stop listening for cancels, reconciling, sweeping, delivering webhooks (a
        // delivery under way is left to its lease) and heartbeating (the fleet forgets this
        // worker now, and the others take over its share).
        background_stop.cancel();
        background.close();
        background.wait().await;
        self.writers_stop.cancel();
        self.writers.close();
        self.writers.wait().await;
        tracing::info!(worker = %self.ctx.worker_id, "worker stopped");
        Ok(())
    }
}
