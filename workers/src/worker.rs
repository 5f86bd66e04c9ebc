//! The worker loop: pull jobs with bounded concurrency, interactive lane first, run each with
//! [`process_one`] in its [`job_span`] (the trace of the request that created it, from the
//! message's `traceparent` header), and settle its message by outcome.
//!
//! The loop only pulls as many jobs as it has free slots, so nothing waits in a local buffer while
//! its ack deadline runs: an interactive job that arrives while batch jobs are queued is pulled at
//! the next free slot, before any batch job that was not already running.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use chatq_common::Settings;
use chatq_common::db::jobs::reconcile;
use chatq_common::heartbeat::WorkerStatus;
use chatq_common::job::{JobEnvelope, Lane};
use chatq_common::metrics as names;
use chatq_common::topology::Topology;
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::cancel::{self, CancelSwitches};
use crate::fleet::Fleet;
use crate::limits::{LimitedProvider, ProviderLimits};
use crate::process::{JobContext, Outcome, job_span, process_one};
use crate::provider::{self, Provider};
use crate::reconciler::Reconciler;
use crate::slots::{Slot, Slots};
use crate::writes::JobWrites;

/// How long an idle worker waits on one pull request before looking at both lanes again.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Most jobs asked for in one pull request.
const MAX_PULL: usize = 256;
/// Longest wait for the next answer to a pull request. The server answers a fetch at once and a
/// long poll within [`IDLE_POLL`]; an answer lost while NATS restarts would otherwise keep the
/// loop waiting forever (a fetch has no expiry of its own). Anything delivered after the loop
/// gave up is redelivered after its ack wait.
const PULL_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker process's job runner.
pub struct Worker {
    ctx: Arc<JobContext>,
    consumers: Vec<(Lane, PullConsumer)>,
    reconciler: Reconciler,
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
        pool: PgPool,
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
        pool: PgPool,
        nats: async_nats::Client,
        provider: Arc<dyn Provider>,
    ) -> anyhow::Result<Self> {
        let jetstream = async_nats::jetstream::new(nats.clone());
        let topology = Topology::new(&settings.nats);
        let mut consumers = Vec::new();
        for lane in Lane::ALL {
            let consumer = topology
                .lane_consumer(&jetstream, lane)
                .await
                .map_err(|err| anyhow::anyhow!(err))
                .with_context(|| format!("cannot open the {lane} consumer"))?;
            consumers.push((lane, consumer));
        }
        let worker_id = format!(
            "{}-{}",
            hostname(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        chatq_common::metrics::install();
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
            i64::try_from(settings.limits.history_max_messages).unwrap_or(i64::MAX),
            &writers,
            writers_stop.clone(),
        );
        let ctx = Arc::new(JobContext {
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
        Ok(Self {
            ctx,
            consumers,
            reconciler,
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
        background.spawn(
            self.reconciler
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
            if let Err(err) = self
                .pull_into(&mut free, &jobs, &hand_back, &shutdown)
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
        // Phase 4: stop listening for cancels, reconciling and heartbeating (the fleet forgets
        // this worker now, and the others take over its share).
        background_stop.cancel();
        background.close();
        background.wait().await;
        self.writers_stop.cancel();
        self.writers.close();
        self.writers.wait().await;
        tracing::info!(worker = %self.ctx.worker_id, "worker stopped");
        Ok(())
    }

    /// Fills free slots: interactive jobs first, then batch; if both lanes are empty, waits a
    /// little on the interactive lane.
    async fn pull_into(
        &self,
        free: &mut Vec<Slot>,
        jobs: &TaskTracker,
        hand_back: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut started = 0;
        for (_, consumer) in &self.consumers {
            if free.is_empty() {
                break;
            }
            let messages = consumer.fetch().max_messages(free.len()).messages().await?;
            started += self
                .dispatch(messages, free, jobs, hand_back, shutdown)
                .await;
        }
        if started == 0 && !free.is_empty() {
            let (_, interactive) = &self.consumers[0];
            let messages = interactive
                .batch()
                .max_messages(free.len())
                .expires(IDLE_POLL)
                .messages()
                .await?;
            self.dispatch(messages, free, jobs, hand_back, shutdown)
                .await;
        }
        Ok(())
    }

    /// Starts a job for each message, each holding one slot. Returns how many started.
    async fn dispatch<S, E>(
        &self,
        mut messages: S,
        free: &mut Vec<Slot>,
        jobs: &TaskTracker,
        hand_back: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> usize
    where
        S: futures::Stream<Item = Result<async_nats::jetstream::Message, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut started = 0;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(PULL_ANSWER_TIMEOUT, messages.next()) => {
                    next.unwrap_or_else(|_| {
                        tracing::debug!("a pull request went unanswered; pulling again");
                        None
                    })
                }
                // A long poll is cut short by shutdown; anything it would still deliver is
                // redelivered after its ack wait.
                () = shutdown.cancelled() => None,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "pull request ended");
                    break;
                }
                None => break,
            };
            let Some(slot) = free.pop() else {
                // More than asked for cannot arrive; if it does, let JetStream redeliver it.
                drop(message.ack_with(AckKind::Nak(None)).await);
                continue;
            };
            started += 1;
            jobs.spawn(run_job(
                self.ctx.clone(),
                message,
                slot,
                hand_back.clone(),
                self.processed.clone(),
            ));
        }
        started
    }
}

/// Runs one delivered job and settles its message.
async fn run_job(
    ctx: Arc<JobContext>,
    message: async_nats::jetstream::Message,
    slot: Slot,
    hand_back: CancellationToken,
    processed: Arc<AtomicU64>,
) {
    let delivered = message.info().map_or(1, |info| info.delivered);
    let (message, delivery) = message.split();
    let (outcome, span) = match serde_json::from_slice::<JobEnvelope>(&message.payload) {
        Ok(envelope) => {
            let span = job_span(&envelope, message.headers.as_ref());
            let outcome = async {
                let outcome = process_one(&ctx, &envelope, &delivery, delivered, &hand_back).await;
                if matches!(outcome, Outcome::Nak(_)) && delivered >= ctx.topology.max_deliver() {
                    last_delivery(&ctx, &envelope, outcome).await
                } else {
                    outcome
                }
            }
            .instrument(span.clone())
            .await;
            (outcome, span)
        }
        Err(err) => {
            tracing::error!(subject = %message.subject, error = %err, "discarding a message that is not a job envelope");
            (Outcome::Term, tracing::Span::none())
        }
    };
    let settled = match outcome {
        // The ack is confirmed by the server, so a lost ack is noticed here and not mistaken
        // for success; the redelivery then finds the job finished.
        Outcome::Ack => delivery.double_ack().await,
        Outcome::Nak(delay) => delivery.ack_with(AckKind::Nak(Some(delay))).await,
        Outcome::Term => delivery.ack_with(AckKind::Term).await,
        Outcome::Abandon => Ok(()),
    };
    if let Err(err) = settled {
        span.in_scope(|| {
            tracing::warn!(?outcome, error = %err, "could not settle a job message; JetStream will redeliver it");
        });
    }
    processed.fetch_add(1, Ordering::Relaxed);
    drop(slot);
}

/// JetStream will not deliver this message again (`max_deliver`), yet the job still needs it.
/// Notes in Postgres that the job has no deliverable copy, so the reconciler publishes a new one
/// once the job is queued (now, or when the worker holding it hands it back), and removes this
/// copy. If Postgres cannot be told, the copy stays (and `outcome` stands).
async fn last_delivery(ctx: &JobContext, envelope: &JobEnvelope, outcome: Outcome) -> Outcome {
    let job_id = envelope.job_id;
    match reconcile::requeue_undeliverable(&ctx.pool, job_id).await {
        Ok(requeued) => {
            if requeued {
                tracing::warn!(%job_id, "job message delivered too often; the reconciler will publish a new copy");
            }
            Outcome::Term
        }
        Err(err) => {
            chatq_common::telemetry::log_error_chain(
                "cannot ask for a new copy of a job whose message is used up",
                &err,
            );
            outcome
        }
    }
}

async fn acquire(slots: &Slots, shutdown: &CancellationToken) -> Option<Slot> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        slot = slots.acquire() => Some(slot),
    }
}

impl Worker {
    /// What this worker says about itself at each heartbeat. In flight are the jobs running
    /// (`jobs`), not the slots held: an idle worker holds its free slots while it waits on a pull.
    fn status_reporter(&self, jobs: &TaskTracker) -> Arc<dyn Fn() -> WorkerStatus + Send + Sync> {
        let jobs = jobs.clone();
        let id = self.ctx.worker_id.clone();
        let slots = self.limits.slots().clone();
        let limits = self.limits.clone();
        let processed = self.processed.clone();
        let configured = self.ctx.worker.concurrency;
        let started_at = time::OffsetDateTime::now_utc().unix_timestamp();
        let host = hostname();
        Arc::new(move || {
            let concurrency = slots.limit();
            let in_flight = jobs.len();
            metrics::gauge!(names::WORKER_SLOTS).set(concurrency as f64);
            metrics::gauge!(names::WORKER_IN_FLIGHT).set(in_flight as f64);
            WorkerStatus {
                id: id.clone(),
                host: host.clone(),
                pid: std::process::id(),
                concurrency,
                configured_concurrency: configured,
                in_flight,
                processed: processed.load(Ordering::Relaxed),
                fleet_size: limits.fleet_size(),
                started_at,
                last_heartbeat_ms: i64::try_from(
                    time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000,
                )
                .unwrap_or(i64::MAX),
            }
        })
    }
}

/// Applies every grant of capacity the fleet task's lease rounds make, and notes the fleet's size.
async fn follow_fleet(
    mut membership: tokio::sync::watch::Receiver<crate::fleet::Membership>,
    mut grants: tokio::sync::watch::Receiver<crate::leases::Grant>,
    limits: Arc<ProviderLimits>,
    stop: CancellationToken,
) {
    loop {
        let size = membership.borrow_and_update().size();
        metrics::gauge!(names::FLEET_WORKERS).set(size as f64);
        limits.note_fleet_size(size);
        limits.apply(*grants.borrow_and_update());
        tokio::select! {
            changed = membership.changed() => if changed.is_err() { return },
            changed = grants.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// `/metrics` and `/healthz` for a worker without an ingress beside it.
async fn serve_metrics(listener: tokio::net::TcpListener, stop: CancellationToken) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                chatq_common::metrics::install()
                    .map(|handle| chatq_common::metrics::render(&handle))
                    .unwrap_or_default()
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let served = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(error = %err, "the worker metrics server stopped");
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}
