//! # chatq-workers
//!
//! Stateless workers: pull jobs from JetStream under bounded concurrency, build the prompt from
//! Postgres, call the LLM provider (streaming), record the reply, publish events, acknowledge.
//! Operators scale throughput by running more worker processes; nothing else changes.
//!
//! # Layout
//!
//! - [`worker`]: the loop: pull (interactive lane first), bound concurrency, settle by outcome,
//!   drain on shutdown.
//! - [`process`]: one delivery of one job, in the trace of the request that created it: claim,
//!   then run an [`attempt`], returning an [`process::Outcome`]; [`call`]: the attempt's
//!   streamed provider call.
//! - [`cache`]: the reply cache of deterministic requests (memory in front of a NATS KV bucket),
//!   and coalescing of identical calls under way.
//! - [`failure`]: after a failed attempt: back-off, the error clients see, dead letters.
//! - [`cancel`]: cancelling a running job at its worker.
//! - [`prompt`]: the system prompt and a bounded history window.
//! - [`history`]: conversations' windows kept between turns, so a turn reads only new messages.
//! - [`memory`]: what an entry of an in-memory cache really takes, for the caches' bounds.
//! - [`events`]: publishing a job's events while it runs.
//! - [`reconciler`]: rebuilding the JetStream queue from Postgres (unpublished jobs, a lost
//!   stream, jobs of dead workers, copies lost while the stream survived).
//! - [`retention`]: the sweep that deletes finished jobs, dead letters and idle conversations
//!   once they have been kept long enough.
//! - [`webhooks`]: delivering completion webhooks from the outbox, signed, retried with
//!   back-off, to public addresses only, in slots of their own.
//! - [`fleet`]: heartbeats in a NATS KV bucket, so each worker knows the fleet, and the lease
//!   rounds that follow them.
//! - [`leases`]: capacity leases: the fleet-wide limits cut into units a worker holds before it
//!   uses them.
//! - [`limits`]: the provider's limits as granted to this worker, and the adaptive reaction to
//!   429s.
//! - [`slots`]: job slots whose number can change while jobs hold them.
//! - [`writes`]: claims and replies of concurrent jobs, written in batches.
//! - [`provider`]: the `Provider` trait and its implementations (OpenAI-compatible, simulated,
//!   with the simulated provider's deterministic text in [`provider::simulated::text`]).

pub mod attempt;
pub mod cache;
pub mod call;
pub mod cancel;
pub mod events;
pub mod failure;
pub mod fleet;
pub mod history;
pub mod leases;
pub mod limits;
pub mod memory;
pub mod process;
pub mod prompt;
pub mod provider;
pub mod reconciler;
pub mod retention;
pub mod retry_after;
pub mod slots;
pub mod webhooks;
pub mod worker;
pub mod writes;

pub use worker::Worker;
