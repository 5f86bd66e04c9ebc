//! `enqueue`: how many messages per second the ingress accepts (202), with no worker running, so
//! only the ingress, Postgres and JetStream are measured.
//!
//! Each request goes to its own conversation (a conversation accepts one pending job at a time),
//! created beforehand in bulk ([`super::fixtures`]), not over HTTP. A warm-up load on other
//! conversations opens the ingress's database connections and fills its key cache first. Afterwards the job
//! stream must hold one message per 202: an accepted job that JetStream does not have would be a
//! bug, not a slow run.

use std::fmt::Write as _;

use serde::Serialize;

use super::args::GeneralArgs;
use super::cpu::CpuWatch;
use super::figures::{cpu_cost_line, cpu_line, thousands};
use super::fixtures;
use super::limits::{Limits, render_ratios};
use super::load_summary::LoadSummary;
use super::services::Services;
use super::stack::{Stack, StackPlan, with_stack};
use super::traffic::send_messages;

/// The design's target for this scenario, on a 2-core machine.
pub const TARGET_PER_SECOND: f64 = 5_000.0;

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
pub async fn run(args: &GeneralArgs, services: &Services) -> anyhow::Result<EnqueueResult> {
    let plan = StackPlan::new(0, args.worker_concurrency, None).without_key_rate_limit();
    with_stack(services, &plan, async |stack: &mut Stack| {
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
        let jobs_in_stream = stack.scratch.jobs_in_stream().await?;
        Ok(EnqueueResult {
            target_per_second: TARGET_PER_SECOND,
            jobs_in_stream,
            accepted_total: warm.succeeded + load.succeeded,
            load,
        })
    })
    .await
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
