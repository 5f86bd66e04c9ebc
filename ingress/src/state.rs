//! What every handler shares. Cloning is cheap: everything inside is a handle.

use std::sync::Arc;

use chatq_common::batch::Batcher;
use chatq_common::db::Db;
use chatq_common::db::jobs::{NewJob, Recorded};
use chatq_common::settings::LimitSettings;
use chatq_common::topology::Topology;

use tokio_util::sync::CancellationToken;

use crate::hub::EventHubs;
use crate::published_marks::PublishedMarks;
use crate::queue_monitor::QueueMonitor;
use crate::ratelimit::KeyRateLimits;

#[derive(Clone)]
pub struct AppState {
    /// What a request may ask for, and how much of this ingress it may use.
    pub limits: Arc<LimitSettings>,
    /// How long a request body may take to arrive (`body_read_timeout_secs`; `body_limit`).
    pub body_read_timeout: std::time::Duration,
    /// Between keep-alive comments on an idle event stream (`sse_keepalive_secs`).
    pub sse_keepalive: std::time::Duration,
    /// `cancel_abandoned_completions`: cancel a completion's job when its client goes away
    /// before the provider was called.
    pub cancel_abandoned_completions: bool,
    /// `unknown_parameters`: refuse a chat completion parameter chatq does not know, or forward
    /// it to the provider.
    pub unknown_parameters: chatq_common::settings::UnknownParameters,
    /// `cache_enabled`: workers may answer from the reply cache, so a streamed completion's
    /// `x-chatq-cache` header waits for the job to start.
    pub cache_enabled: bool,
    /// Short background tasks a request leaves behind (a cancel after its client went away);
    /// shutdown waits for them.
    pub tasks: tokio_util::task::TaskTracker,
    pub pool: Db,
    pub nats: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub topology: Topology,
    /// API keys to owners, with the bounds that keep unknown keys cheap.
    pub keys: crate::key_directory::KeyDirectory,
    /// Batches "JetStream acknowledged this job" updates into one statement.
    pub published: PublishedMarks,
    /// The model used when neither the request nor the conversation names one.
    pub default_model: Option<Arc<str>>,
    /// `CHATQ_MODELS`: the model names clients may ask for (empty: any).
    pub models: Arc<[String]>,
    /// Per-job event hubs shared by this process's SSE clients.
    pub hubs: EventHubs,
    /// Open SSE streams, bounded by `max_event_streams` and each tenant's `event_streams` quota.
    pub event_streams: crate::stream_slots::StreamSlots,
    /// Cancelled when the server shuts down, to end SSE streams cleanly.
    pub streams_stop: CancellationToken,
    /// When this process started (Unix seconds), shown as the models' `created`.
    pub started_at: i64,
    /// Queue depth and drain rate, sampled in the background.
    pub queue: QueueMonitor,
    /// Per-key request rate limits.
    pub key_limits: KeyRateLimits,
    /// Which webhook targets are allowed, and how many endpoints a tenant may have.
    pub webhooks: Arc<chatq_common::settings::WebhookSettings>,
    /// Records the new jobs of concurrent requests together (group commit).
    pub jobs: Batcher<NewJob, Result<Recorded, sqlx::Error>>,
}
