//! What every handler shares. Cloning is cheap: everything inside is a handle.

use std::sync::Arc;

use chatq_common::Settings;
use chatq_common::topology::Topology;
use sqlx::PgPool;

use crate::auth::KeyCache;
use crate::publish::PublishedMarks;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub topology: Topology,
    pub keys: KeyCache,
    /// Batches "JetStream acknowledged this job" updates into one statement.
    pub published: PublishedMarks,
    /// The model used when neither the request nor the conversation names one.
    pub default_model: Option<Arc<str>>,
}
