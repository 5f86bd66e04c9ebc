//! # chatq-common
//!
//! What every chatq role shares. Nothing here serves HTTP or runs a worker loop; the `ingress` and
//! `workers` crates build on it.
//!
//! # Layout
//!
//! - [`settings`]: the one typed settings struct, its layers (defaults, file, `CHATQ_*`, flags)
//!   and the generated command-line flags.
//! - [`telemetry`]: logging set-up, pretty or JSON, always to standard error; JSON lines carry
//!   the trace id of the request or job they belong to.
//! - [`trace`]: the W3C `traceparent` that makes a request and its job one trace.
//! - [`ids`]: typed, prefixed identifiers (`conv_…`, `msg_…`, `job_…`).
//! - [`api_key`]: key format, generation and the hash that is stored.
//! - [`batch`]: group commit: concurrent writes of one kind gathered into one statement.
//! - [`chat`]: prompts, sampling parameters and usage, independent of any provider.
//! - [`job`]: lanes, statuses, the stored request and the envelope published to JetStream.
//! - [`events`]: the events a job emits while it runs, and how they travel over NATS.
//! - [`heartbeat`]: worker heartbeats in the KV bucket, written by workers, read by operators.
//! - [`topology`]: every stream, subject and consumer, created idempotently at start-up.
//! - [`metrics`]: every Prometheus metric, described once, and the recorder behind `/metrics`.
//! - [`nats`]: connecting to NATS with start-up logging.
//! - [`queue`]: publishing a job to JetStream, with its id as `Nats-Msg-Id` and its trace as
//!   `traceparent`.
//! - [`db`]: the Postgres pool, migrations, and one module of queries per table.

pub mod api_key;
pub mod batch;
pub mod chat;
pub mod db;
pub mod events;
pub mod heartbeat;
pub mod ids;
pub mod job;
pub mod metrics;
pub mod nats;
pub mod queue;
pub mod settings;
pub mod telemetry;
pub mod topology;
pub mod trace;

pub use settings::Settings;
