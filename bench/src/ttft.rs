//! `ttft`: time to the first streamed token through chatq, beside the same request sent straight
//! to the provider, in the same run.
//!
//! Through chatq: `POST /v1/chat/completions` with `stream: true`, timed from sending the request
//! to the first chunk that carries content (not the role chunk, which chatq sends at once); then
//! the same with a tool offered, timed to the first tool-call chunk, so streamed tool calls are
//! compared with text.
//! Direct: the same request to the mock's own `/v1/chat/completions`, timed the same way. Both
//! run open loop at a moderate rate, so the figure is that of a working system, not of one
//! request on an idle one. The difference is what chatq adds: recording the job, publishing it,
//! a worker pulling and claiming it, and the first delta's way back through NATS and the
//! ingress. The jobs' own timings (queue wait, the provider's TTFT as the worker saw it) say
//! which of these it is.

use std::fmt::Write as _;

use serde::Serialize;

use super::args::GeneralArgs;
use super::cpu::CpuWatch;
use super::figures::Percentiles;
use super::ledger;
use super::phase::{self, PhaseSummary};
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::traffic::{Answer, completions_load, job_ids};

/// The design's target: provider TTFT + at most this, at p99.
pub const TARGET_ADDED_MS: f64 = 5.0;
/// Tokens in each streamed reply, and the mock's delay between them: a short, steady stream.
const TOKENS: u32 = 16;
const TOKEN_DELAY_MS: u64 = 10;
/// Seconds of warm-up through chatq before measuring.
const WARM_UP_SECS: f64 = 2.0;

#[derive(Debug, Clone, clap::Args)]
pub struct TtftArgs {
    /// ttft: streamed requests per second, in each phase (open loop).
    #[arg(id = "ttft-rate", long = "ttft-rate", default_value_t = 30.0)]
    pub rate: f64,
    /// ttft: seconds each phase sends for.
    #[arg(id = "ttft-seconds", long = "ttft-seconds", default_value_t = 20.0)]
    pub seconds: f64,
    /// ttft: the mock provider's time to first token, in milliseconds.
    #[arg(id = "ttft-mock-ms", long = "ttft-mock-ms", default_value_t = 200)]
    pub mock_ttft_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TtftResult {
    pub mock_ttft_ms: u64,
    pub workers: usize,
    pub worker_concurrency: usize,
    pub chatq: PhaseSummary,
    pub direct: PhaseSummary,
    /// chatq's time to first content minus the direct one, at p50 and p99.
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// The same requests offered a tool, answered with a streamed call: time to the first
    /// tool-call chunk.
    pub tool_calls: PhaseSummary,
    pub tool_calls_direct: PhaseSummary,
    pub tool_calls_added_p50_ms: f64,
    pub tool_calls_added_p99_ms: f64,
    /// Per job, `created_at` to `started_at`.
    pub job_wait_ms: Percentiles,
    /// Per job, the provider's TTFT as the worker timed it.
    pub job_provider_ttft_ms: Percentiles,
    pub target_added_ms: f64,
}

/// Runs the scenario on a stack of its own (mock, ingress, workers).
///
/// # Errors
/// The stack does not start, or a load cannot run.
pub async fn run(
    args: &GeneralArgs,
    ttft: &TtftArgs,
    services: &Services,
) -> anyhow::Result<TtftResult> {
    let mock = MockPlan {
        ttft_ms: ttft.mock_ttft_ms,
        token_delay_ms: TOKEN_DELAY_MS,
        tokens: TOKENS,
    };
    let plan = StackPlan::new(args.workers, args.worker_concurrency, Some(mock));
    with_stack(services, &plan, async |stack: &mut Stack| {
        let mock = stack
            .mock
            .ok_or_else(|| anyhow::anyhow!("no mock provider"))?;
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let warm = completions_load(
            "ttft warm-up",
            stack,
            stack.ingress,
            ttft.rate,
            WARM_UP_SECS,
            true,
            Answer::Text,
        );
        phase::run(warm, &watch, 200).await?;
        let through = completions_load(
            "ttft through chatq",
            stack,
            stack.ingress,
            ttft.rate,
            ttft.seconds,
            true,
            Answer::Text,
        );
        let (chatq, outcome) = phase::run(through, &watch, 200).await?;
        let direct = completions_load(
            "ttft direct to the mock",
            stack,
            mock,
            ttft.rate,
            ttft.seconds,
            true,
            Answer::Text,
        );
        let (direct, _) = phase::run(direct, &watch, 200).await?;
        // The same, answered with a streamed tool call instead of text.
        let tools_through = completions_load(
            "ttft tool calls through chatq",
            stack,
            stack.ingress,
            ttft.rate,
            ttft.seconds,
            true,
            Answer::ToolCall,
        );
        let (tool_calls, _) = phase::run(tools_through, &watch, 200).await?;
        let tools_direct = completions_load(
            "ttft tool calls direct to the mock",
            stack,
            mock,
            ttft.rate,
            ttft.seconds,
            true,
            Answer::ToolCall,
        );
        let (tool_calls_direct, _) = phase::run(tools_direct, &watch, 200).await?;
        stack.check_alive()?;

        let job_ids = job_ids(
            outcome
                .sent
                .iter()
                .filter_map(|sent| sent.header.as_deref()),
        );
        let jobs = ledger::jobs_by_id(&stack.scratch.pool, &job_ids).await?;
        let waits: Vec<f64> = jobs.iter().filter_map(|job| job.wait_ms).collect();
        let provider: Vec<f64> = jobs
            .iter()
            .filter_map(|job| job.ttft_ms.map(f64::from))
            .collect();
        let (through, straight) = (
            chatq.first_content_ms.unwrap_or_default(),
            direct.first_content_ms.unwrap_or_default(),
        );
        let (tools_through, tools_straight) = (
            tool_calls.first_content_ms.unwrap_or_default(),
            tool_calls_direct.first_content_ms.unwrap_or_default(),
        );
        Ok(TtftResult {
            mock_ttft_ms: ttft.mock_ttft_ms,
            workers: args.workers,
            worker_concurrency: args.worker_concurrency,
            added_p50_ms: through.p50 - straight.p50,
            added_p99_ms: through.p99 - straight.p99,
            tool_calls_added_p50_ms: tools_through.p50 - tools_straight.p50,
            tool_calls_added_p99_ms: tools_through.p99 - tools_straight.p99,
            chatq,
            direct,
            tool_calls,
            tool_calls_direct,
            job_wait_ms: Percentiles::of_millis(&waits)?,
            job_provider_ttft_ms: Percentiles::of_millis(&provider)?,
            target_added_ms: TARGET_ADDED_MS,
        })
    })
    .await
}

impl TtftResult {
    pub fn render(&self, out: &mut String) {
        let verdict = if self.added_p99_ms <= self.target_added_ms {
            "met"
        } else {
            "MISSED"
        };
        let _ = writeln!(
            out,
            "\nTTFT: streamed chat completions, time to the first chunk with content; mock TTFT {} ms, {TOKENS} tokens {TOKEN_DELAY_MS} ms apart; {} workers × concurrency {}",
            self.mock_ttft_ms, self.workers, self.worker_concurrency
        );
        self.chatq.render(out);
        self.direct.render(out);
        let _ = writeln!(
            out,
            "  added by chatq: p50 {:+.2} ms, p99 {:+.2} ms (target p99 ≤ +{} ms: {verdict})",
            self.added_p50_ms, self.added_p99_ms, self.target_added_ms
        );
        self.tool_calls.render(out);
        self.tool_calls_direct.render(out);
        let _ = writeln!(
            out,
            "  added by chatq to the first tool-call chunk: p50 {:+.2} ms, p99 {:+.2} ms (text above: p50 {:+.2}, p99 {:+.2})",
            self.tool_calls_added_p50_ms,
            self.tool_calls_added_p99_ms,
            self.added_p50_ms,
            self.added_p99_ms
        );
        let _ = writeln!(
            out,
            "  the jobs, as recorded: queue wait (created → started) {}",
            self.job_wait_ms
        );
        let _ = writeln!(
            out,
            "                         provider TTFT seen by the worker {}",
            self.job_provider_ttft_ms
        );
        let _ = writeln!(
            out,
            "  CPU per request through chatq, ms: {}",
            self.chatq.cpu_cost()
        );
    }
}
