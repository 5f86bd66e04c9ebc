//! End-to-end tests of the HTTP API against real Postgres and NATS, with the LLM mocked over HTTP.
//! Each test starts its own chatq (own database, own namespace), so they run in parallel.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a step that fails is the test failing"
)]

mod helpers;
mod sse;
mod tool_calls;

mod backpressure;
mod bad_input;
mod batch_cli;
mod batches;
mod body_limit;
mod cache;
mod chat;
mod claim_plan;
mod completions;
mod concurrency;
mod events;
mod fairness;
mod feedback;
mod idempotency;
mod jobs;
mod lanes;
mod lifecycle;
mod listing;
mod openapi;
mod pooler;
mod published_marks;
mod pulling;
mod rename;
mod responses;
mod retention;
mod surface;
mod tenancy;
mod tenancy_matrix;
mod traces;
mod web;
mod web_browser;
mod webhook_events;
mod webhooks;
mod write_path;

mod hostile;
