//! `e2e`: completed jobs per second, end to end: ingress, JetStream, workers, the mock provider
//! (at zero latency by default, so chatq's own cost is what is measured), and Postgres.
//!
//! M jobs, each in its own conversation, are submitted as fast as the load generator can while
//! the workers run; the clock runs from the first submission until the database has no queued or
//! running job left. Per-job latencies come from the jobs table (`created_at` to `finished_at`,
//! and the `queued_ms` and `upstream_ms` the workers record), so they are the system's own
//! account of each job. A warm-up batch runs to completion first.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::args::GeneralArgs;
use super::cpu::{CpuUsage, CpuWatch};
use super::figures::{Percentiles, cpu_cost_line, cpu_line, thousands};
use super::limits::{Limits, render_ratios};
use super::load_summary::LoadSummary;
use super::machine::LoadAverage;
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::traffic::send_messages;
use super::{fixtures, progress};

/// The design's target for this scenario, on a 2-core machine with zero provider latency.
pub const TARGET_PER_SECOND: f64 = 2_000.0;
/// How often the database is asked whether jobs are still active.
const POLL_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Serialize)]
pub struct E2eResult {
    pub jobs: usize,
    pub workers: usize,
    pub worker_concurrency: usize,
    pub mock_ttft_ms: u64,
    pub mock_tokens: u32,
    pub mock_token_delay_ms: u64,
    pub target_per_second: f64,
    /// The submissions, made while the workers were already running.
    pub submit: LoadSummary,
    /// From the first submission until no job was queued or running.
    pub seconds: f64,
    pub succeeded: u64,
    pub completed_per_second: f64,
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// The jobs did not all finish within `--timeout-secs`.
    pub timed_out: bool,
    /// From the first job recorded to the last finished, by the database's clock.
    pub database_span_secs: f64,
    /// Per job, `created_at` to `finished_at`.
    pub job_total_ms: Percentiles,
    /// Per job, `created_at` to `started_at` (waiting for a worker).
    pub job_queued_ms: Percentiles,
    /// Per job, the provider call.
    pub job_upstream_ms: Percentiles,
    pub load_average: LoadAverage,
    pub cpu: CpuUsage,
}

/// Runs the scenario on a stack of its own (mock, ingress, workers).
///
/// # Errors
/// The stack does not start, or the load cannot run.
pub async fn run(args: &GeneralArgs, services: &Services) -> anyhow::Result<E2eResult> {
    let mock = MockPlan {
        ttft_ms: args.mock_ttft_ms,
        token_delay_ms: args.mock_token_delay_ms,
        tokens: args.mock_tokens,
    };
    let plan =
        StackPlan::new(args.workers, args.worker_concurrency, Some(mock)).without_key_rate_limit();
    let timeout = Duration::from_secs(args.timeout_secs);
    with_stack(services, &plan, async |stack: &mut Stack| {
        let pool = stack.scratch.pool.clone();
        let warm_up = fixtures::create_conversations(&pool, stack.tenant, args.warmup).await?;
        let measured = fixtures::create_conversations(&pool, stack.tenant, args.jobs).await?;
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);

        let warm = send_messages("warm-up", stack, &warm_up, args.concurrency)?;
        LoadSummary::measure(warm, &watch, 202).await?;
        let submitted = AtomicBool::new(true);
        let warmed = wait_until_finished(stack, &submitted, Instant::now(), timeout).await?;
        anyhow::ensure!(warmed, "the warm-up jobs did not finish within {timeout:?}");

        let load_average = LoadAverage::now();
        let cpu_start = watch.sample();
        let started = Instant::now();
        let submitted = AtomicBool::new(false);
        let submit = async {
            let load = send_messages("e2e submit (202)", stack, &measured, args.concurrency)?;
            let summary = LoadSummary::measure(load, &watch, 202).await;
            submitted.store(true, Ordering::Release);
            summary
        };
        let (submit, finished) = tokio::join!(
            submit,
            wait_until_finished(stack, &submitted, started, timeout)
        );
        let (submit, timed_out) = (submit?, !finished?);
        let seconds = started.elapsed().as_secs_f64();
        let cpu = watch.usage_since(&cpu_start);
        stack.check_alive()?;

        let outcomes = fixtures::job_outcomes(&pool, &measured).await?;
        let succeeded = outcomes.by_status.get("succeeded").copied().unwrap_or(0);
        Ok(E2eResult {
            jobs: args.jobs,
            workers: args.workers,
            worker_concurrency: args.worker_concurrency,
            mock_ttft_ms: args.mock_ttft_ms,
            mock_tokens: args.mock_tokens,
            mock_token_delay_ms: args.mock_token_delay_ms,
            target_per_second: TARGET_PER_SECOND,
            submit,
            seconds,
            succeeded,
            completed_per_second: succeeded as f64 / seconds,
            by_status: outcomes.by_status.clone(),
            timed_out,
            database_span_secs: outcomes.span_secs,
            job_total_ms: Percentiles::of_millis(&outcomes.total_ms)?,
            job_queued_ms: Percentiles::of_millis(&outcomes.queued_ms)?,
            job_upstream_ms: Percentiles::of_millis(&outcomes.upstream_ms)?,
            load_average,
            cpu,
        })
    })
    .await
}

/// Polls until everything is submitted and no job is queued or running. Returns `false` if that
/// did not happen within `timeout` of `started`.
async fn wait_until_finished(
    stack: &Stack,
    submitted: &AtomicBool,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let mut spinner = None;
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        if !submitted.load(Ordering::Acquire) {
            continue;
        }
        let active = fixtures::active_jobs(&stack.scratch.pool).await?;
        if active == 0 {
            if let Some(spinner) = spinner {
                indicatif::ProgressBar::finish_and_clear(&spinner);
            }
            return Ok(true);
        }
        if started.elapsed() > timeout {
            return Ok(false);
        }
        spinner
            .get_or_insert_with(|| progress::step("waiting for jobs"))
            .set_message(format!("{active} queued or running"));
    }
}

impl E2eResult {
    pub fn render(&self, out: &mut String, limits: Option<&Limits>) {
        let verdict = if self.completed_per_second >= self.target_per_second && !self.timed_out {
            "met"
        } else {
            "MISSED"
        };
        let _ = writeln!(
            out,
            "\nE2E: jobs submitted and run to completion; mock provider: TTFT {} ms, {} tokens, {} ms between tokens",
            self.mock_ttft_ms, self.mock_tokens, self.mock_token_delay_ms
        );
        let _ = writeln!(
            out,
            "  {} workers × concurrency {}; {} jobs submitted over {} connections",
            self.workers,
            self.worker_concurrency,
            thousands(self.jobs as f64),
            self.submit.connections
        );
        let _ = writeln!(
            out,
            "  completed {} in {:.2} s (first submission to last job finished): {}/s (target ≥ {}/s: {verdict}, {:.0} %){}",
            thousands(self.succeeded as f64),
            self.seconds,
            thousands(self.completed_per_second),
            thousands(self.target_per_second),
            self.completed_per_second / self.target_per_second * 100.0,
            if self.timed_out { "; TIMED OUT" } else { "" },
        );
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(status, count)| format!("{status} × {}", thousands(*count as f64)))
            .collect();
        let _ = writeln!(out, "  job statuses: {}", statuses.join(", "));
        let _ = writeln!(
            out,
            "  database clock, first job recorded to last finished: {:.2} s",
            self.database_span_secs
        );
        let _ = writeln!(
            out,
            "  submitting, while workers ran: {}/s answered 202 in {:.2} s; latency ms: {}; answers: {}",
            thousands(self.submit.per_second),
            self.submit.seconds,
            self.submit.latency_ms,
            self.submit.answers()
        );
        let _ = writeln!(
            out,
            "  per job, ms: created → finished {}",
            self.job_total_ms
        );
        let _ = writeln!(
            out,
            "               queued (created → started) {}",
            self.job_queued_ms
        );
        let _ = writeln!(out, "               provider call {}", self.job_upstream_ms);
        render_ratios(out, self.completed_per_second, limits);
        let _ = writeln!(out, "  load average at start: {}", self.load_average);
        let _ = writeln!(out, "  CPU: {}", cpu_line(&self.cpu));
        let _ = writeln!(
            out,
            "  CPU per completed job, ms: {}",
            cpu_cost_line(&self.cpu, self.completed_per_second)
        );
    }
}
