//! `lanes`: how long interactive jobs wait for a worker while a large batch runs.
//!
//! A backlog of batch-lane jobs (10,000 by default) is queued the way a batch submission queues
//! them, the workers start and fill every slot with batch jobs, and then interactive messages
//! (`POST /v1/conversations/{id}/messages`) arrive at a steady rate (open loop). Each interactive
//! job's queue wait is `created_at` → `started_at` as Postgres recorded it. Workers pull the
//! interactive lane first, so an interactive job should wait only for the next slot to free up:
//! about `latency / concurrency` on average, not for the batch backlog.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chatq_common::job::Lane;
use serde::Serialize;

use super::args::GeneralArgs;
use super::cpu::CpuWatch;
use super::figures::{Percentiles, thousands};
use super::phase::{self, PhaseSummary};
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::traffic::messages_load;
use super::{fixtures, ledger, progress};

/// How long the interactive jobs may take to finish after the last was sent.
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, clap::Args)]
pub struct LanesArgs {
    /// lanes: batch-lane jobs queued before the workers start.
    #[arg(id = "lanes-batch", long = "lanes-batch", default_value_t = 10_000)]
    pub batch: usize,
    /// lanes: interactive messages per second while the batch runs (open loop).
    #[arg(id = "lanes-rate", long = "lanes-rate", default_value_t = 10.0)]
    pub rate: f64,
    /// lanes: seconds interactive messages are sent for.
    #[arg(id = "lanes-seconds", long = "lanes-seconds", default_value_t = 20.0)]
    pub seconds: f64,
    /// lanes: the mock provider's latency, in milliseconds.
    #[arg(id = "lanes-mock-ms", long = "lanes-mock-ms", default_value_t = 200)]
    pub mock_ms: u64,
    /// lanes: jobs each worker runs at once (CHATQ_WORKER_CONCURRENCY).
    #[arg(
        id = "lanes-worker-concurrency",
        long = "lanes-worker-concurrency",
        default_value_t = 64
    )]
    pub worker_concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LanesResult {
    pub batch: usize,
    pub workers: usize,
    pub worker_concurrency: usize,
    pub mock_ms: u64,
    pub interactive: PhaseSummary,
    /// Interactive jobs, by status, once they had all ended.
    pub interactive_jobs: String,
    /// Per interactive job, `created_at` → `started_at`.
    pub interactive_wait_ms: Percentiles,
    /// Batch jobs that succeeded per second while the interactive messages were sent.
    pub batch_per_second: f64,
    /// Batch jobs still queued when the interactive ones had all ended.
    pub batch_left: i64,
    pub interactive_timed_out: bool,
}

/// Runs the scenario on a stack of its own (mock, ingress, then the workers).
///
/// # Errors
/// The stack does not start, or a step cannot run.
pub async fn run(
    args: &GeneralArgs,
    lanes: &LanesArgs,
    services: &Services,
) -> anyhow::Result<LanesResult> {
    let mock = MockPlan {
        ttft_ms: lanes.mock_ms,
        token_delay_ms: 0,
        tokens: 16,
    };
    let plan = StackPlan::new(0, lanes.worker_concurrency, Some(mock));
    with_stack(services, &plan, async |stack: &mut Stack| {
        let pool = stack.scratch.pool.clone();
        let count = (lanes.rate * lanes.seconds).round().max(1.0) as usize;
        let conversations = fixtures::create_conversations(&pool, stack.tenant, count).await?;
        fixtures::queue_completions(
            &stack.scratch,
            stack.tenant,
            Lane::Batch,
            lanes.batch,
            3_600.0,
        )
        .await?;
        stack.add_workers(args.workers)?;
        // Every slot has taken a batch job once the first round of them has finished.
        let spinner = progress::step("lanes: batch filling the workers");
        let full = (args.workers * lanes.worker_concurrency) as i64;
        while ledger::count(&pool, Some("batch"), "succeeded").await? < full {
            stack.check_alive()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        spinner.finish_and_clear();

        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let batch_before = ledger::count(&pool, Some("batch"), "succeeded").await?;
        let started = Instant::now();
        let plan = messages_load(
            "lanes interactive (202)",
            stack,
            &conversations,
            lanes.rate,
            256,
        );
        let (interactive, _) = phase::run(plan, &watch, 202).await?;
        let batch_per_second = (ledger::count(&pool, Some("batch"), "succeeded").await?
            - batch_before) as f64
            / started.elapsed().as_secs_f64();

        let jobs =
            ledger::jobs_of_conversations_ended(&pool, &conversations, FINISH_TIMEOUT).await?;
        stack.check_alive()?;
        let waits: Vec<f64> = jobs.iter().filter_map(|job| job.wait_ms).collect();
        Ok(LanesResult {
            batch: lanes.batch,
            workers: args.workers,
            worker_concurrency: lanes.worker_concurrency,
            mock_ms: lanes.mock_ms,
            interactive,
            interactive_jobs: ledger::describe(&ledger::by_status(jobs.iter())),
            interactive_timed_out: !jobs.iter().all(|job| ledger::is_terminal(&job.status)),
            interactive_wait_ms: Percentiles::of_millis(&waits)?,
            batch_per_second,
            batch_left: ledger::count(&pool, Some("batch"), "queued").await?,
        })
    })
    .await
}

impl LanesResult {
    pub fn render(&self, out: &mut String) {
        let slot_ms = self.mock_ms as f64 / (self.workers * self.worker_concurrency).max(1) as f64;
        let _ = writeln!(
            out,
            "\nLANES: interactive messages while {} batch-lane jobs run; mock latency {} ms; {} workers × concurrency {}",
            thousands(self.batch as f64),
            self.mock_ms,
            self.workers,
            self.worker_concurrency
        );
        self.interactive.render(out);
        let _ = writeln!(
            out,
            "      interactive jobs: {}{}",
            self.interactive_jobs,
            if self.interactive_timed_out {
                " (NOT ALL ENDED)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "      interactive queue wait (created → started) ms: {}",
            self.interactive_wait_ms
        );
        let _ = writeln!(
            out,
            "      meanwhile the batch ran at {:.0} jobs/s, {} still queued at the end; a slot frees every {slot_ms:.1} ms on average",
            self.batch_per_second,
            thousands(self.batch_left as f64),
        );
    }
}
