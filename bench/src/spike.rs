//! `spike`: a burst of requests (20,000 in 2 s by default) against a provider limited to 100
//! requests/s (`CHATQ_PROVIDER_RPM=6000`), once per queue size (`CHATQ_QUEUE_MAX_JOBS`): a small
//! queue sheds part of the burst with 503 and `Retry-After`, a large one accepts all of it.
//!
//! The burst is open loop: `POST /v1/conversations/{id}/messages`, each to its own conversation,
//! due at a fixed rate however fast the ingress answers. Then the bench waits until no job is
//! queued or running, and checks the ledger in the scratch database: every request was answered
//! 202 or 503 (a 503 with `Retry-After`), every 202's conversation has exactly one job and it
//! ended, no 503's conversation has one, and the job stream is empty. The drain rate is read from
//! the provider's side, the mock's arrival times, and must be the limit ±5 %.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use super::args::GeneralArgs;
use super::cpu::CpuWatch;
use super::figures::thousands;
use super::mock::{self, ArrivalRate};
use super::phase::{self, PhaseSummary};
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::traffic::messages_load;
use super::{fixtures, ledger};

/// How far the drain rate may be from the limit.
pub const TOLERANCE: f64 = 0.05;
/// Requests sent, and drained, before the spike, so the ingress's connections are open.
const WARM_UP: usize = 100;

#[derive(Debug, Clone, clap::Args)]
pub struct SpikeArgs {
    /// spike: requests in the burst, each to its own conversation.
    #[arg(
        id = "spike-requests",
        long = "spike-requests",
        default_value_t = 20_000
    )]
    pub requests: usize,
    /// spike: seconds over which the burst is due (open loop).
    #[arg(id = "spike-seconds", long = "spike-seconds", default_value_t = 2.0)]
    pub seconds: f64,
    /// spike: CHATQ_PROVIDER_RPM (6000 is 100 requests/s).
    #[arg(id = "spike-rpm", long = "spike-rpm", default_value_t = 6_000)]
    pub rpm: u32,
    /// spike: CHATQ_QUEUE_MAX_JOBS of each run, e.g. 2000,1000000 (the second accepts all).
    #[arg(
        long = "spike-queue-max-jobs",
        value_delimiter = ',',
        default_value = "2000"
    )]
    pub queue_max_jobs: Vec<i64>,
    /// spike: most connections the burst may use at once.
    #[arg(
        id = "spike-connections",
        long = "spike-connections",
        default_value_t = 1_000
    )]
    pub connections: usize,
    /// spike: the mock provider's latency, in milliseconds.
    #[arg(id = "spike-mock-ms", long = "spike-mock-ms", default_value_t = 100)]
    pub mock_ms: u64,
    /// spike: seconds the accepted jobs may take to drain.
    #[arg(
        id = "spike-drain-timeout-secs",
        long = "spike-drain-timeout-secs",
        default_value_t = 900
    )]
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpikeRun {
    pub queue_max_jobs: i64,
    pub burst: PhaseSummary,
    pub accepted: usize,
    pub shed: usize,
    /// Answers other than 202 and 503, and requests without a whole answer.
    pub other: usize,
    pub shed_without_retry_after: usize,
    /// Jobs of the burst's conversations, by status, after the drain.
    pub jobs: String,
    pub jobs_recorded: usize,
    pub jobs_not_ended: usize,
    pub accepted_without_job: usize,
    pub shed_with_job: usize,
    /// Messages left in the job stream after the drain.
    pub stream_left: u64,
    pub drain_timed_out: bool,
    /// From the first request due to the last job finished.
    pub seconds_to_drain: f64,
    /// Requests reaching the provider from the burst's first to its last.
    pub provider: ArrivalRate,
    pub limit_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpikeResult {
    pub rpm: u32,
    pub runs: Vec<SpikeRun>,
}

/// Runs the burst once per queue size, each on a stack of its own.
///
/// # Errors
/// A stack does not start, or a step cannot run.
pub async fn run(
    args: &GeneralArgs,
    spike: &SpikeArgs,
    services: &Services,
) -> anyhow::Result<SpikeResult> {
    let mut runs = Vec::new();
    for &queue_max_jobs in &spike.queue_max_jobs {
        runs.push(run_once(args, spike, services, queue_max_jobs).await?);
    }
    Ok(SpikeResult {
        rpm: spike.rpm,
        runs,
    })
}

async fn run_once(
    args: &GeneralArgs,
    spike: &SpikeArgs,
    services: &Services,
    queue_max_jobs: i64,
) -> anyhow::Result<SpikeRun> {
    let mock = MockPlan {
        ttft_ms: spike.mock_ms,
        token_delay_ms: 0,
        tokens: 16,
    };
    let plan = StackPlan::new(args.workers, args.worker_concurrency, Some(mock))
        .without_key_rate_limit()
        .with_env("CHATQ_PROVIDER_RPM", spike.rpm)
        .with_env("CHATQ_QUEUE_MAX_JOBS", queue_max_jobs);
    with_stack(services, &plan, async |stack: &mut Stack| {
        let mock = stack
            .mock
            .ok_or_else(|| anyhow::anyhow!("no mock provider"))?;
        let pool = stack.scratch.pool.clone();
        let warm_up = fixtures::create_conversations(&pool, stack.tenant, WARM_UP).await?;
        let measured = fixtures::create_conversations(&pool, stack.tenant, spike.requests).await?;
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        phase::run(
            messages_load("spike warm-up", stack, &warm_up, 200.0, 64),
            &watch,
            202,
        )
        .await?;
        ledger::drain(&stack.scratch.pool, Instant::now(), Duration::from_secs(60)).await?;
        mock::reset(mock).await?;

        let label = format!("spike, queue max {queue_max_jobs}");
        let rate = spike.requests as f64 / spike.seconds.max(1e-3);
        let started = Instant::now();
        let (burst, outcome) = phase::run(
            messages_load(&label, stack, &measured, rate, spike.connections),
            &watch,
            202,
        )
        .await?;
        let timeout = Duration::from_secs(spike.drain_timeout_secs);
        let drained = ledger::drain(&stack.scratch.pool, started, timeout).await?;
        let seconds_to_drain = started.elapsed().as_secs_f64();
        stack.check_alive()?;

        let jobs = ledger::jobs_of_conversations(&pool, &measured).await?;
        let job_of: HashMap<Uuid, &ledger::JobRecord> = jobs
            .iter()
            .filter_map(|job| Some((job.conversation_id?, job)))
            .collect();
        let (mut accepted, mut shed, mut other) = (0, 0, 0);
        let (mut shed_without_retry_after, mut accepted_without_job, mut shed_with_job) = (0, 0, 0);
        for sent in &outcome.sent {
            let has_job = job_of.contains_key(&measured[sent.index]);
            match (sent.status, &sent.error) {
                (Some(202), None) => {
                    accepted += 1;
                    accepted_without_job += usize::from(!has_job);
                }
                (Some(503), None) => {
                    shed += 1;
                    shed_without_retry_after += usize::from(!sent.retry_after);
                    shed_with_job += usize::from(has_job);
                }
                _ => other += 1,
            }
        }
        let stats = mock::stats(mock).await?;
        Ok(SpikeRun {
            queue_max_jobs,
            accepted,
            shed,
            other,
            shed_without_retry_after,
            jobs: ledger::describe(&ledger::by_status(jobs.iter())),
            jobs_recorded: jobs.len(),
            jobs_not_ended: jobs
                .iter()
                .filter(|job| !ledger::is_terminal(&job.status))
                .count(),
            accepted_without_job,
            shed_with_job,
            stream_left: stack.scratch.jobs_in_stream().await?,
            drain_timed_out: !drained,
            seconds_to_drain,
            provider: ArrivalRate::of(&stats.arrivals_ms),
            limit_per_second: f64::from(spike.rpm) / 60.0,
            burst,
        })
    })
    .await
}

impl SpikeResult {
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nSPIKE: a burst of POST /v1/conversations/{{id}}/messages against a provider limit of CHATQ_PROVIDER_RPM={} ({:.0}/s)",
            self.rpm,
            f64::from(self.rpm) / 60.0
        );
        for run in &self.runs {
            run.render(out);
        }
    }
}

impl SpikeRun {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "  CHATQ_QUEUE_MAX_JOBS={}:", self.queue_max_jobs);
        self.burst.render(out);
        let answered_right = self.other == 0 && self.shed_without_retry_after == 0;
        let ledger_right = self.accepted_without_job == 0
            && self.shed_with_job == 0
            && self.jobs_recorded == self.accepted
            && self.jobs_not_ended == 0
            && self.stream_left == 0;
        let _ = writeln!(
            out,
            "      accepted (202) {}, shed (503) {} of which {} without Retry-After, anything else {}: {}",
            thousands(self.accepted as f64),
            thousands(self.shed as f64),
            self.shed_without_retry_after,
            self.other,
            if answered_right {
                "every request accepted or shed, as it must be"
            } else {
                "NOT every request accepted or shed with Retry-After"
            },
        );
        let _ = writeln!(
            out,
            "      ledger after the drain: jobs {}; 202 without a job {}, 503 with a job {}, not ended {}, left in the job stream {}: {}",
            self.jobs,
            self.accepted_without_job,
            self.shed_with_job,
            self.jobs_not_ended,
            self.stream_left,
            if ledger_right {
                "none lost"
            } else {
                "MISMATCH"
            },
        );
        let within = (self.provider.per_second - self.limit_per_second).abs()
            <= self.limit_per_second * TOLERANCE;
        let _ = writeln!(
            out,
            "      drained in {:.1} s{}; provider saw {} (limit {:.1}/s ±{:.0} %: {})",
            self.seconds_to_drain,
            if self.drain_timed_out {
                " (TIMED OUT)"
            } else {
                ""
            },
            self.provider,
            self.limit_per_second,
            TOLERANCE * 100.0,
            if within { "met" } else { "MISSED" },
        );
    }
}
