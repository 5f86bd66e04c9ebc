//! `overhead`: what chatq adds to the provider's own latency at a fixed arrival rate (500
//! requests/s by default), for non-streaming chat completions.
//!
//! Two open-loop phases at the same rate, with the same requests: through chatq
//! (`POST /v1/chat/completions`, `stream: false`, answered when the job has finished) and straight
//! to the mock. The difference of their percentiles is one reading of the overhead; the other is
//! per request: each answer's latency minus the provider call its job recorded (`upstream_ms`,
//! timed by the worker), which leaves chatq's own part of that very request. Requests that could
//! not start on time (every connection busy, or the generator behind) are counted: they mean the
//! rate asked for was not the rate delivered.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::args::GeneralArgs;
use super::cpu::CpuWatch;
use super::figures::Percentiles;
use super::phase::{self, PhaseSummary};
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::stages::Stages;
use super::traffic::{Answer, completions_load, job_ids};
use super::{ledger, openloop};

/// The design's targets for the added latency at 500 requests/s.
pub const TARGET_P50_MS: f64 = 3.0;
pub const TARGET_P99_MS: f64 = 15.0;
/// Seconds of warm-up through chatq before measuring.
const WARM_UP_SECS: f64 = 2.0;

#[derive(Debug, Clone, clap::Args)]
pub struct OverheadArgs {
    /// overhead: requests per second in each phase (open loop).
    #[arg(id = "overhead-rate", long = "overhead-rate", default_value_t = 500.0)]
    pub rate: f64,
    /// overhead: seconds each phase sends for.
    #[arg(
        id = "overhead-seconds",
        long = "overhead-seconds",
        default_value_t = 10.0
    )]
    pub seconds: f64,
    /// overhead: the mock provider's latency (time to the whole reply), in milliseconds.
    #[arg(
        id = "overhead-mock-ms",
        long = "overhead-mock-ms",
        default_value_t = 50
    )]
    pub mock_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OverheadResult {
    pub mock_ms: u64,
    pub workers: usize,
    pub worker_concurrency: usize,
    pub chatq: PhaseSummary,
    pub direct: PhaseSummary,
    /// chatq's latency percentiles minus the direct ones.
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// Per request: its latency minus its job's recorded provider call.
    pub per_request_added_ms: Percentiles,
    /// Per job, `created_at` to `started_at`.
    pub job_wait_ms: Percentiles,
    /// Per job, the provider call as the worker timed it.
    pub job_upstream_ms: Percentiles,
    /// Where each request's time went.
    pub stages: Stages,
}

/// Runs the scenario on a stack of its own (mock, ingress, workers).
///
/// # Errors
/// The stack does not start, or a load cannot run.
pub async fn run(
    args: &GeneralArgs,
    overhead: &OverheadArgs,
    services: &Services,
) -> anyhow::Result<OverheadResult> {
    let mock = MockPlan {
        ttft_ms: overhead.mock_ms,
        token_delay_ms: 0,
        tokens: args.mock_tokens,
    };
    let plan =
        StackPlan::new(args.workers, args.worker_concurrency, Some(mock)).without_key_rate_limit();
    with_stack(services, &plan, async |stack: &mut Stack| {
        let mock = stack
            .mock
            .ok_or_else(|| anyhow::anyhow!("no mock provider"))?;
        let (rate, seconds) = (overhead.rate, overhead.seconds);
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let warm = completions_load(
            "overhead warm-up",
            stack,
            stack.ingress,
            rate,
            WARM_UP_SECS,
            false,
            Answer::Text,
        );
        phase::run(warm, &watch, 200).await?;
        let through = completions_load(
            "overhead through chatq",
            stack,
            stack.ingress,
            rate,
            seconds,
            false,
            Answer::Text,
        );
        let (chatq, outcome) = phase::run(through, &watch, 200).await?;
        let direct = completions_load(
            "overhead direct to the mock",
            stack,
            mock,
            rate,
            seconds,
            false,
            Answer::Text,
        );
        let (direct, _) = phase::run(direct, &watch, 200).await?;
        stack.check_alive()?;

        // Pair each answer with its job's recorded provider call.
        let answered: Vec<&openloop::Sent> = outcome
            .with_status(200)
            .filter(|sent| sent.error.is_none())
            .collect();
        let ids = job_ids(answered.iter().filter_map(|sent| sent.header.as_deref()));
        let jobs = ledger::jobs_by_id(&stack.scratch.pool, &ids).await?;
        let upstream: HashMap<uuid::Uuid, f64> = jobs
            .iter()
            .filter_map(|job| Some((job.id, f64::from(job.upstream_ms?))))
            .collect();
        let per_request: Vec<f64> = answered
            .iter()
            .filter_map(|sent| {
                let id = job_ids(sent.header.as_deref().into_iter()).pop()?;
                let latency_ms = sent.latency().as_secs_f64() * 1000.0;
                Some((latency_ms - upstream.get(&id)?).max(0.0))
            })
            .collect();
        let waits: Vec<f64> = jobs.iter().filter_map(|job| job.wait_ms).collect();
        let upstreams: Vec<f64> = upstream.values().copied().collect();
        let stages = Stages::of(&stack.scratch.pool, &outcome).await?;
        Ok(OverheadResult {
            mock_ms: overhead.mock_ms,
            workers: args.workers,
            worker_concurrency: args.worker_concurrency,
            added_p50_ms: chatq.latency_ms.p50 - direct.latency_ms.p50,
            added_p99_ms: chatq.latency_ms.p99 - direct.latency_ms.p99,
            chatq,
            direct,
            per_request_added_ms: Percentiles::of_millis(&per_request)?,
            job_wait_ms: Percentiles::of_millis(&waits)?,
            job_upstream_ms: Percentiles::of_millis(&upstreams)?,
            stages,
        })
    })
    .await
}

impl OverheadResult {
    pub fn render(&self, out: &mut String) {
        let verdict = |value: f64, target: f64| if value <= target { "met" } else { "MISSED" };
        let _ = writeln!(
            out,
            "\nOVERHEAD: non-streaming chat completions, open loop; mock latency {} ms; {} workers × concurrency {}",
            self.mock_ms, self.workers, self.worker_concurrency
        );
        self.chatq.render(out);
        self.direct.render(out);
        let _ = writeln!(
            out,
            "  added by chatq, difference of percentiles: p50 {:+.2} ms (target ≤ {TARGET_P50_MS}: {}), p99 {:+.2} ms (target ≤ {TARGET_P99_MS}: {})",
            self.added_p50_ms,
            verdict(self.added_p50_ms, TARGET_P50_MS),
            self.added_p99_ms,
            verdict(self.added_p99_ms, TARGET_P99_MS),
        );
        let _ = writeln!(
            out,
            "  added by chatq, per request (latency − its job's provider call): {}",
            self.per_request_added_ms
        );
        self.stages.render(out);
        let _ = writeln!(
            out,
            "  CPU per request through chatq, ms: {}",
            self.chatq.cpu_cost()
        );
    }
}
