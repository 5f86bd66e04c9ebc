//! # chatq-ingress
//!
//! The HTTP front door. It is thin and stateless: authenticate, validate, record the request in
//! Postgres, publish the job to JetStream, answer. It never calls the LLM, so its latency does not
//! depend on the provider's and any number of replicas can run side by side.
//!
//! # Layout
//!
//! - [`Application`]: binds the listener, builds the router, serves until shutdown, then drains.
//! - `routes`: one module per resource; each handler parses what axum extracted, calls one
//!   function below, and maps the result.
//! - `submit`: the path every job-creating request takes: record (group commit), queue (or take
//!   back when the queue is full), idempotent replay; a conversation turn and a chat completion.
//! - `waiting`: the one place a wait for a job's end goes through (`Prefer: wait=N`, `?wait=N`,
//!   a non-streaming completion, a cancel).
//! - `cancel`: cancelling a queued or running job.
//! - `hub`: per-job event hubs behind SSE and waits: one replay and log per job, any number of
//!   clients, live events from one subscription per process, and the Postgres fallback that ends
//!   every wait.
//! - `files`, `batches`: the OpenAI Files and Batch APIs; a batch's lines are jobs on the batch
//!   lane, recorded in bulk.
//! - `responses`: the Responses API: a response is a chat completion job, with its input items,
//!   instructions and metadata beside it, and stream events derived from the job's event log.
//! - `webhooks`: a tenant's webhook endpoints: the URL and events checked, the secret shown
//!   once (deliveries are the workers' job).
//! - `chat_api`: the chat completions wire format clients speak: the request and its
//!   validation, the completion and chunk shapes.
//! - `auth`: API keys to tenants; `key_directory`: the key caches and the bounds that keep
//!   unknown keys from costing Postgres.
//! - `extract`: extractors that turn bad input into clear 4xx answers; `body_limit`: the 413 for
//!   an oversized body, which every client gets to read.
//! - `validate`: request bodies and their limits.
//! - `cache_control`: the reply cache as clients see it (opting out, `x-chatq-cache`).
//! - `views`: the JSON shapes of the API.
//! - `queue_monitor`: queue depth per lane and the drain rate behind `Retry-After`.
//! - `ratelimit`: per-key request rate limits.
//! - `serve`: the server loop, with a cap on connections and a deadline for request headers.
//! - `observe`: request metrics and `GET /metrics`.
//! - `trace_context`: one trace per request (`traceparent` in and out), named by the request's
//!   span and recorded on the jobs it creates.
//! - `published_marks`: batching the "JetStream stored it" notes.
//! - `openapi`: `GET /openapi.json`, the document the handlers' own annotations make.
//! - [`error`]: the one error type, in the OpenAI error shape.

mod auth;
mod batches;
mod body_limit;
mod cache_control;
mod cancel;
mod chat_api;
pub mod error;
mod extract;
mod files;
mod hub;
mod key_directory;
mod observe;
mod openapi;
mod published_marks;
mod queue_monitor;
mod ratelimit;
mod responses;
mod routes;
mod serve;
mod state;
mod stream_slots;
mod submit;
mod trace_context;
mod validate;
mod views;
mod waiting;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::http::HeaderName;
use chatq_common::Settings;
use chatq_common::db::Db;
use chatq_common::settings::ProviderKind;
use chatq_common::topology::Topology;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::hub::EventHubs;
pub use crate::published_marks::PublishedMarks;
use crate::state::AppState;

/// The model used when a request and its conversation name none and `CHATQ_MODEL` is unset, with
/// the simulated provider (which answers for any model).
pub const SIMULATED_DEFAULT_MODEL: &str = "chatq-simulated";

/// A bound, ready-to-serve ingress.
pub struct Application {
    listener: TcpListener,
    router: Router,
    background: TaskTracker,
    /// Stops the background tasks once the server has finished its last request.
    background_stop: CancellationToken,
    /// Ends open event streams when shutdown begins (they would otherwise never finish).
    streams_stop: CancellationToken,
    connection_limits: serve::ConnectionLimits,
}

impl Application {
    /// Binds `http_addr` (port 0 picks a free port) and builds the router, handing each part of
    /// the ingress the group of settings it uses.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn build(
        settings: &Settings,
        pool: Db,
        nats: async_nats::Client,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.ingress.http_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (CHATQ_HTTP_ADDR)",
                    settings.ingress.http_addr
                )
            })?;
        let background = TaskTracker::new();
        let background_stop = CancellationToken::new();
        let default_model = settings.provider.model.clone().or_else(|| {
            (settings.provider.kind == ProviderKind::Simulated)
                .then(|| SIMULATED_DEFAULT_MODEL.to_owned())
        });
        let streams_stop = CancellationToken::new();
        let topology = Topology::new(&settings.nats);
        let models: Vec<String> = settings
            .provider
            .models
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        chatq_common::metrics::install();
        chatq_common::metrics::register_ingress(settings.limits.max_event_streams);
        let queue = queue_monitor::QueueMonitor::new(settings.nats.queue_max_jobs);
        background.spawn(queue.clone().run_until_stopped(
            async_nats::jetstream::new(nats.clone()),
            topology.clone(),
            background_stop.clone(),
        ));
        let key_limits = ratelimit::KeyRateLimits::new(&settings.limits);
        let keys = key_directory::KeyDirectory::new(pool.clone(), &settings.limits);
        // Subscribed before the first request is served, so no revocation can be missed.
        let revocations = nats
            .subscribe(topology.key_revocations_subject())
            .await
            .context("cannot subscribe to key revocations")?;
        background.spawn(forget_revoked_keys(
            revocations,
            keys.clone(),
            background_stop.clone(),
        ));
        background.spawn(forget_idle_keys(
            key_limits.clone(),
            keys.clone(),
            background_stop.clone(),
        ));
        // New jobs of concurrent requests are recorded together (group commit).
        let jobs = {
            let pool = pool.clone();
            chatq_common::batch::Batcher::start(
                &background,
                background_stop.clone(),
                4,
                128,
                move |jobs| {
                    let pool = pool.clone();
                    async move { chatq_common::db::jobs::record_gathered(&pool, jobs).await }
                },
            )
        };
        let state = AppState {
            jobs,
            queue,
            key_limits,
            hubs: EventHubs::new(
                nats.clone(),
                topology.clone(),
                pool.clone(),
                background.clone(),
                background_stop.clone(),
            ),
            event_streams: stream_slots::StreamSlots::new(
                settings.limits.max_event_streams,
                settings.limits.tenant_max_event_streams,
                pool.clone(),
            ),
            streams_stop: streams_stop.clone(),
            models: models.into(),
            started_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            topology,
            jetstream: async_nats::jetstream::new(nats.clone()),
            nats,
            keys,
            published: PublishedMarks::start(pool.clone(), &background, background_stop.clone()),
            pool,
            default_model: default_model.map(Arc::from),
            limits: Arc::new(settings.limits.clone()),
            body_read_timeout: std::time::Duration::from_secs(
                settings.ingress.body_read_timeout_secs.max(1),
            ),
            sse_keepalive: std::time::Duration::from_secs(
                settings.ingress.sse_keepalive_secs.max(1),
            ),
            cancel_abandoned_completions: settings.ingress.cancel_abandoned_completions,
            unknown_parameters: settings.ingress.unknown_parameters,
            cache_enabled: settings.cache.enabled,
            webhooks: Arc::new(settings.webhooks.clone()),
            tasks: background.clone(),
        };
        // Batch validations another ingress began and did not finish are taken up here.
        background.spawn(batches::validate::run_until_stopped(
            state.clone(),
            streams_stop.clone(),
        ));
        let request_id = HeaderName::from_static("x-request-id");
        let router = routes::router(state)
            .layer(TraceLayer::new_for_http().make_span_with(trace_context::request_span))
            // Outside the span's layer, so the span can name the trace.
            .layer(axum::middleware::from_fn(trace_context::begin))
            .layer(PropagateRequestIdLayer::new(request_id.clone()))
            .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
        Ok(Self {
            listener,
            router,
            background,
            background_stop,
            streams_stop,
            connection_limits: serve::ConnectionLimits {
                max_connections: settings.ingress.max_connections,
                header_read_timeout: std::time::Duration::from_secs(
                    settings.ingress.header_read_timeout_secs.max(1),
                ),
            },
        })
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// The socket has no local address (not in practice).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains.
    ///
    /// # Errors
    /// The server fails (not for a single bad request).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(%addr, "ingress listening on http://{addr}");
        // Phase 1: stop accepting connections, end event streams (clients reconnect elsewhere
        // with Last-Event-ID), and let other requests in flight finish.
        let streams_stop = self.streams_stop.clone();
        let end_streams = async {
            shutdown.cancelled().await;
            streams_stop.cancel();
        };
        tokio::join!(
            serve::serve(
                self.listener,
                self.router,
                self.connection_limits,
                shutdown.clone()
            ),
            end_streams
        );
        // Phase 2: flush the background batchers, now that no request can feed them.
        self.background_stop.cancel();
        self.background.close();
        self.background.wait().await;
        tracing::info!("ingress stopped");
        Ok(())
    }
}

/// Empties the key cache whenever a key is revoked, so the revoked key stops working now rather
/// than when its cache entry expires.
async fn forget_revoked_keys(
    mut revocations: async_nats::Subscriber,
    keys: key_directory::KeyDirectory,
    stop: CancellationToken,
) {
    use futures::StreamExt as _;
    loop {
        tokio::select! {
            revoked = revocations.next() => match revoked {
                Some(_) => keys.forget_known_keys(),
                None => return,
            },
            () = stop.cancelled() => return,
        }
    }
}

/// Keeps the per-key and per-peer limiters' memory bounded by forgetting keys and peers that
/// have been idle.
async fn forget_idle_keys(
    limits: ratelimit::KeyRateLimits,
    keys: key_directory::KeyDirectory,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                limits.forget_idle();
                keys.forget_idle();
            }
            () = stop.cancelled() => return,
        }
    }
}
