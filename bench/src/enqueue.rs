//! `enqueue`: how many messages per second the ingress accepts (202), with no worker running, so
//! only the ingress, Postgres and JetStream are measured.
//!
//! Each request goes to its own conversation (a conversation accepts one pending job at a time),
//! created beforehand directly in the scratch database. A warm-up load on other conversations
//! opens the ingress's database connections and fills its key cache first. Afterwards the job
//! stream must hold one message per 202: an accepted job that JetStream does not have would be a
//! bug, not a slow run.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use hyper::{Method, Uri};
use serde::Serialize;
use uuid::Uuid;

use super::cpu::CpuWatch;
use super::limits::Limits;
use super::load::{Load, Requests};
use super::report::{LoadSummary, cpu_cost_line, cpu_line, render_ratios, thousands};
use super::stack::{Stack, StackPlan};
use super::{BenchArgs, Services, fixtures};

/// The design's target for this scenario, on a 2-core machine.
pub const TARGET_PER_SECOND: f64 = 5_000.0;

/// The message every request sends: a typical short chat turn.
pub const MESSAGE: &str = r#"{"content":"Summarise the plot of Moby-Dick in three sentences, for a reader who has not read it."}"#;

#[derive(Debug, Clone, Serialize)]
pub struct EnqueueResult {
    pub load: LoadSummary,
    pub target_per_second: f64,
    /// Messages in the job stream afterwards (warm-up included).
    pub jobs_in_stream: u64,
    /// Requests answered 202, warm-up included: what the stream should hold.
    pub accepted_total: u64,
}

/// Runs the scenario on a stack of its own (ingress only).
///
/// # Errors
/// The stack does not start, or the load cannot run.
pub async fn run(args: &BenchArgs, services: &Services) -> anyhow::Result<EnqueueResult> {
    let plan = StackPlan::new(0, args.worker_concurrency, None).without_key_rate_limit();
    super::with_stack(services, &plan, async |stack: &mut Stack| {
        let warm_up =
            fixtures::create_conversations(&stack.scratch.pool, stack.tenant, args.warmup).await?;
        let measured =
            fixtures::create_conversations(&stack.scratch.pool, stack.tenant, args.requests)
                .await?;
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let warm = LoadSummary::measure(
            send_messages("warm-up", stack, &warm_up, args.concurrency)?,
            &watch,
            202,
        )
        .await?;
        let load = LoadSummary::measure(
            send_messages("enqueue (202)", stack, &measured, args.concurrency)?,
            &watch,
            202,
        )
        .await?;
        stack.check_alive()?;
        let jobs_in_stream = jobs_in_stream(stack).await?;
        Ok(EnqueueResult {
            target_per_second: TARGET_PER_SECOND,
            jobs_in_stream,
            accepted_total: warm.succeeded + load.succeeded,
            load,
        })
    })
    .await
}

/// A load sending [`MESSAGE`] once to each conversation.
pub fn send_messages(
    label: &str,
    stack: &Stack,
    conversations: &[Uuid],
    connections: usize,
) -> anyhow::Result<Load> {
    let paths = conversations
        .iter()
        .map(|id| {
            let id = chatq_common::ids::ConversationId::from_uuid(*id);
            Uri::try_from(format!("/v1/conversations/{id}/messages"))
                .context("a conversation path is not a valid URI")
        })
        .collect::<anyhow::Result<Vec<Uri>>>()?;
    Ok(Load {
        label: label.into(),
        target: stack.ingress,
        method: Method::POST,
        requests: Requests::EachOnce(Arc::from(paths)),
        body: Bytes::from_static(MESSAGE.as_bytes()),
        api_key: Some(stack.api_key.clone()),
        connections,
    })
}

async fn jobs_in_stream(stack: &Stack) -> anyhow::Result<u64> {
    let mut stream = stack
        .scratch
        .jetstream
        .get_stream(stack.scratch.topology.jobs_stream())
        .await
        .context("cannot find the job stream")?;
    let info = stream
        .info()
        .await
        .context("cannot read the job stream's state")?;
    Ok(info.state.messages)
}

impl EnqueueResult {
    pub fn render(&self, out: &mut String, limits: Option<&Limits>) {
        let load = &self.load;
        let verdict = if load.per_second >= self.target_per_second {
            "met"
        } else {
            "MISSED"
        };
        let _ = writeln!(
            out,
            "\nENQUEUE: POST /v1/conversations/{{id}}/messages answered 202, no workers running"
        );
        let _ = writeln!(
            out,
            "  {} requests over {} connections in {:.2} s: {}/s (target ≥ {}/s: {verdict}, {:.0} %)",
            thousands(load.sent() as f64),
            load.connections,
            load.seconds,
            thousands(load.per_second),
            thousands(self.target_per_second),
            load.per_second / self.target_per_second * 100.0,
        );
        let _ = writeln!(out, "  latency ms: {}", load.latency_ms);
        let _ = writeln!(out, "  answers: {}", load.answers());
        let stream_check = if self.jobs_in_stream == self.accepted_total {
            "one per 202, as it must be"
        } else {
            "MISMATCH with the 202 answers"
        };
        let _ = writeln!(
            out,
            "  jobs in JetStream afterwards: {} of {} accepted (warm-up included): {stream_check}",
            thousands(self.jobs_in_stream as f64),
            thousands(self.accepted_total as f64),
        );
        render_ratios(out, load.per_second, limits);
        let _ = writeln!(out, "  load average at start: {}", load.load_average);
        let _ = writeln!(out, "  CPU: {}", cpu_line(&load.cpu));
        let _ = writeln!(
            out,
            "  CPU per request, ms: {}",
            cpu_cost_line(&load.cpu, load.per_second)
        );
    }
}
