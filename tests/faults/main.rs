//! Fault tests: chatq's delivery guarantees, each proven by breaking something on purpose.
//!
//! Every scenario runs chatq as separate processes of the binary under test (an ingress and
//! workers), against a nats-server of its own (a modern one: `CQTEST_NATS_SERVER`, which
//! `scripts/test` installs), a Postgres cluster of its own (initdb, run as the `postgres` user when
//! the tests run as root) and a mock LLM served over HTTP from the test. It submits a few hundred
//! messages, injects its fault while they run, and ends with a ledger ([`ledger`]): every
//! accepted job reaches exactly one terminal state, with at most one reply, and none is lost.
//!
//! - [`batches`]: a worker killed mid-batch: every line answered exactly once.
//! - [`cache`]: the reply cache across worker processes: one provider call for identical
//!   requests on two workers, a dead call holder, the shared tier after a restart.
//! - [`workers`]: a worker killed mid-job, stopped with SIGTERM, crashing between commit and ack;
//!   long calls kept alive by in-progress acks.
//! - [`nats`]: nats-server killed and restarted, with its store kept or wiped.
//! - [`postgres`]: Postgres crashing and restarting.
//! - [`ingress`]: an ingress crashing between recording and publishing; draining on SIGTERM.
//! - [`provider`]: 429/500 storms, `Retry-After`, dead letters, an untrusted provider.
//! - [`lifecycle`]: cancellation and deadlines.
//! - [`cluster`]: a node of a 3-node JetStream cluster (the meta leader, the jobs stream's
//!   leader) killed mid-run and brought back.
//! - [`fleet`]: provider limits held by a fleet of 1, 2 and 4 worker processes, a worker's death,
//!   and a limit nobody configured.
//! - [`ops`]: the operations kit (deploy/) against a running ingress and worker: the rules and
//!   the dashboard name only metrics chatq exports, and a real Prometheus fires the queue-wait
//!   alert under load.
//! - [`responses`]: a worker killed mid-response: it completes once, and its stream resumes
//!   from a sequence number with no gap or repeat.
//! - [`tool_calls`]: a worker killed while the provider streams tool calls: every client ends
//!   with one whole answer.
//! - [`webhooks`]: a worker dead after its commit, before delivering: the webhook is still
//!   delivered, once.
//! - [`traces`]: one trace per request in the JSON logs of an ingress and a worker, also for a
//!   job the reconciler published after its ingress crashed.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a step that fails is the test failing"
)]

mod harness;
mod ledger;
#[path = "../api/tool_calls.rs"]
mod shared_tool_calls;
#[path = "../api/sse.rs"]
mod sse;

mod batches;
mod cache;
mod cluster;
mod fleet;
mod ingress;
mod lifecycle;
mod nats;
mod ops;
mod postgres;
mod provider;
mod responses;
mod tool_calls;
mod traces;
mod webhooks;
mod workers;
