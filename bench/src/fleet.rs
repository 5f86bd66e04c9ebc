//! `fleet`: throughput as worker processes are added, against a provider with a fixed latency,
//! once without a provider limit and once with `CHATQ_PROVIDER_RPM` set.
//!
//! A backlog of chat-completion jobs is queued first, with no worker running, so the ingress
//! plays no part and the workers always have work. Then workers are added step by step (1, 2, 4
//! by default); after each step the fleet settles (heartbeats spread the limit's shares), and
//! for a fixed time the bench counts the jobs that succeeded (Postgres) and the requests that
//! reached the provider (the mock's own count and arrival times). Without a limit, each worker
//! can complete at most `concurrency / latency` jobs per second; with one, the fleet as a whole
//! must stay at the limit however many workers there are.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chatq_common::job::Lane;
use serde::Serialize;

use super::cpu::{CpuUsage, CpuWatch};
use super::figures::{cpu_line, thousands};
use super::machine::LoadAverage;
use super::mock::{self, ArrivalRate};
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::{fixtures, ledger, progress};

#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// fleet: worker counts to step through (workers are added, never removed).
    #[arg(
        id = "fleet-workers",
        long = "fleet-workers",
        value_delimiter = ',',
        default_value = "1,2,4"
    )]
    pub workers: Vec<usize>,
    /// fleet: jobs each worker runs at once (CHATQ_WORKER_CONCURRENCY).
    #[arg(
        id = "fleet-worker-concurrency",
        long = "fleet-worker-concurrency",
        default_value_t = 32
    )]
    pub worker_concurrency: usize,
    /// fleet: the mock provider's latency (time to first token), in milliseconds.
    #[arg(id = "fleet-mock-ms", long = "fleet-mock-ms", default_value_t = 200)]
    pub mock_ms: u64,
    /// fleet: CHATQ_PROVIDER_RPM of the second run (the first has no limit); 0 skips it.
    #[arg(id = "fleet-rpm", long = "fleet-rpm", default_value_t = 24_000)]
    pub rpm: u32,
    /// fleet: seconds measured at each worker count.
    #[arg(id = "fleet-seconds", long = "fleet-seconds", default_value_t = 10)]
    pub seconds: u64,
    /// fleet: seconds after adding workers before measuring.
    #[arg(
        id = "fleet-settle-secs",
        long = "fleet-settle-secs",
        default_value_t = 5
    )]
    pub settle_secs: u64,
    /// fleet: jobs queued before the first worker starts.
    #[arg(id = "fleet-backlog", long = "fleet-backlog", default_value_t = 16_000)]
    pub backlog: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetStep {
    pub workers: usize,
    /// `workers × concurrency / latency`: the most the fleet could do against this provider.
    pub ceiling_per_second: f64,
    pub jobs_per_second: f64,
    /// Requests that reached the provider per second, by the mock's count.
    pub provider_per_second: f64,
    pub provider_arrivals: ArrivalRate,
    /// Jobs still queued at the end of the step (0 means the backlog ran out).
    pub backlog_left: i64,
    pub load_average: LoadAverage,
    pub cpu: CpuUsage,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetRun {
    pub rpm: Option<u32>,
    pub steps: Vec<FleetStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetResult {
    pub worker_concurrency: usize,
    pub mock_ms: u64,
    pub seconds: u64,
    pub runs: Vec<FleetRun>,
}

/// Runs the steps without a limit, then (unless `--fleet-rpm 0`) with one, each run on a stack
/// of its own.
///
/// # Errors
/// A stack does not start, or a step cannot be measured.
pub async fn run(fleet: &FleetArgs, services: &Services) -> anyhow::Result<FleetResult> {
    let mut runs = vec![run_once(fleet, services, None).await?];
    if fleet.rpm > 0 {
        runs.push(run_once(fleet, services, Some(fleet.rpm)).await?);
    }
    Ok(FleetResult {
        worker_concurrency: fleet.worker_concurrency,
        mock_ms: fleet.mock_ms,
        seconds: fleet.seconds,
        runs,
    })
}

async fn run_once(
    fleet: &FleetArgs,
    services: &Services,
    rpm: Option<u32>,
) -> anyhow::Result<FleetRun> {
    let mock = MockPlan {
        ttft_ms: fleet.mock_ms,
        token_delay_ms: 0,
        tokens: 16,
    };
    let mut plan = StackPlan::new(0, fleet.worker_concurrency, Some(mock));
    if let Some(rpm) = rpm {
        plan = plan.with_env("CHATQ_PROVIDER_RPM", rpm);
    }
    with_stack(services, &plan, async |stack: &mut Stack| {
        let mock = stack
            .mock
            .ok_or_else(|| anyhow::anyhow!("no mock provider"))?;
        fixtures::queue_completions(
            &stack.scratch,
            stack.tenant,
            Lane::Interactive,
            fleet.backlog,
            3_600.0,
        )
        .await?;
        let mut steps = Vec::new();
        for &workers in &fleet.workers {
            let running = stack.count("worker");
            stack.add_workers(workers.saturating_sub(running))?;
            let label = match rpm {
                Some(rpm) => format!("fleet {workers} workers, rpm {rpm}"),
                None => format!("fleet {workers} workers"),
            };
            steps.push(measure_step(fleet, stack, mock, workers, &label).await?);
        }
        Ok(FleetRun { rpm, steps })
    })
    .await
}

async fn measure_step(
    fleet: &FleetArgs,
    stack: &mut Stack,
    mock: std::net::SocketAddr,
    workers: usize,
    label: &str,
) -> anyhow::Result<FleetStep> {
    let settle = progress::timed(
        &format!("{label}: settling"),
        Duration::from_secs(fleet.settle_secs),
    );
    let settling = Instant::now();
    while settling.elapsed() < Duration::from_secs(fleet.settle_secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        settle.update(0, settling.elapsed());
    }
    settle.finish(0);
    stack.check_alive()?;
    let pool = &stack.scratch.pool.clone();
    let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
    let load_average = LoadAverage::now();
    let cpu_start = watch.sample();
    let started = Instant::now();
    let succeeded_before = ledger::count(pool, None, "succeeded").await?;
    let provider_before = mock::stats(mock).await?.requests;
    let duration = Duration::from_secs(fleet.seconds);
    let bar = progress::timed(label, duration);
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.update(0, started.elapsed());
    }
    let succeeded_after = ledger::count(pool, None, "succeeded").await?;
    let stats = mock::stats(mock).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = watch.usage_since(&cpu_start);
    bar.finish(0);
    stack.check_alive()?;
    let from = usize::try_from(provider_before).unwrap_or(usize::MAX);
    let to = usize::try_from(stats.requests).unwrap_or(usize::MAX);
    let arrivals = stats
        .arrivals_ms
        .get(from..to.min(stats.arrivals_ms.len()))
        .unwrap_or(&[]);
    Ok(FleetStep {
        workers,
        ceiling_per_second: (workers * fleet.worker_concurrency) as f64 * 1000.0
            / fleet.mock_ms.max(1) as f64,
        jobs_per_second: (succeeded_after - succeeded_before) as f64 / seconds,
        provider_per_second: (stats.requests - provider_before) as f64 / seconds,
        provider_arrivals: ArrivalRate::of(arrivals),
        backlog_left: ledger::count(pool, None, "queued").await?,
        load_average,
        cpu,
    })
}

impl FleetResult {
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nFLEET: a backlog of jobs run by 1..N worker processes × concurrency {}; mock latency {} ms; {} s measured per step",
            self.worker_concurrency, self.mock_ms, self.seconds
        );
        for run in &self.runs {
            let limit = run.rpm.map_or("no provider limit".to_owned(), |rpm| {
                format!("CHATQ_PROVIDER_RPM={rpm} ({:.1}/s)", f64::from(rpm) / 60.0)
            });
            let _ = writeln!(out, "  {limit}:");
            for step in &run.steps {
                let ran_out = if step.backlog_left == 0 {
                    " (BACKLOG RAN OUT)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "    {} workers: {} jobs/s (ceiling {}/s); provider saw {:.1}/s, {}{ran_out}",
                    step.workers,
                    thousands(step.jobs_per_second),
                    thousands(step.ceiling_per_second),
                    step.provider_per_second,
                    step.provider_arrivals,
                );
                let _ = writeln!(
                    out,
                    "        load average {}; CPU {}",
                    step.load_average,
                    cpu_line(&step.cpu)
                );
            }
        }
    }
}
