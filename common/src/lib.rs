//! # chatq-common
//!
//! What every chatq role shares. Nothing here serves HTTP or runs a worker loop; the `ingress` and
//! `workers` crates build on it.
//!
//! # Layout
//!
//! - [`settings`]: the settings, typed and grouped by component, their layers (defaults, file,
//!   `CHATQ_*`, flags) and the generated command-line flags.
//! - [`telemetry`]: logging set-up, pretty or JSON, always to standard error; JSON lines carry
//!   the trace id of the request or job they belong to.
//! - [`trace`]: the W3C `traceparent` that makes a request and its job one trace.
//! - [`webhooks`]: completion webhooks: event types and bodies, allowed targets, signatures.
//! - [`ids`]: typed, prefixed identifiers (`conv_…`, `msg_…`, `job_…`).
//! - [`api_key`]: key format, generation and the hash that is stored.
//! - [`batch`]: group commit: concurrent writes of one kind gathered into one statement.
//! - [`chat`]: prompts, sampling parameters and usage, independent of any provider.
//! - [`choices`]: the assistant's answer as OpenAI-shaped choices (text, tool calls, refusal,
//!   reasoning, logprobs), streamed as deltas and put together again.
//! - [`job`]: lanes, statuses, the stored request, the envelope published to JetStream, and the
//!   public shape of a job ([`job::view`]).
//! - [`events`]: the events a job emits while it runs, one typed contract between processes.
//! - `fault`: fault points for the fault tests (only in builds with `fault-injection`).
//! - [`heartbeat`]: worker heartbeats in the KV bucket, written by workers, read by operators.
//! - [`topology`]: every stream, subject and consumer, created idempotently at start-up.
//! - [`metrics`]: every Prometheus metric, described once, and the recorder behind `/metrics`.
//! - [`nats`]: connecting to NATS with start-up logging.
//! - [`queue`]: publishing a job to JetStream, with its id as `Nats-Msg-Id` and its trace as
//!   `traceparent`.
//! - [`reply_cache`]: the key names of the reply cache's shared tier, and evicting from it.
//! - [`db`]: the Postgres pool, migrations, and one module of queries per table.

pub mod api_key;
pub mod batch;
pub mod chat;
pub mod choices;
pub mod db;
pub mod events;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod heartbeat;
pub mod ids;
pub mod job;
pub mod metrics;
pub mod nats;
pub mod queue;
pub mod reply_cache;
pub mod settings;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod webhooks;

pub use settings::Settings;
