//! `fairness`: how long one tenant's interactive jobs wait while another tenant floods the queue.
//!
//! Two tenants, each with its own API key. First the *probe* tenant sends interactive messages
//! (`POST /v1/conversations/{id}/messages`) at a steady rate (open loop) to an otherwise idle
//! queue: its queue wait then is the baseline. Then the *flooding* tenant sends 10,000 messages
//! (by default), each to a conversation of its own, as fast as the load generator's connections
//! are answered, through the same HTTP API. Once every one is answered, while most of them are
//! still queued, the probe tenant sends at the same rate again. A queue wait is `created_at` →
//! `started_at` as Postgres recorded it, as in [`super::lanes`].
//!
//! With fair sharing (README "Fair sharing"), the flooding tenant's jobs beyond its first
//! `CHATQ_FAIR_SHARE_QUEUED_JOBS` wait on the overflow subject, which workers pull after the
//! front, so the probe tenant's jobs wait only for the next free slot, about as long as on an
//! idle queue. `--fairness-share-queued-jobs 4294967295` turns fair sharing off (every job waits
//! in front, in order): the probe's jobs then wait behind the whole backlog.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chatq_common::db::Db;
use chatq_common::job::Lane;
use serde::Serialize;
use uuid::Uuid;

use super::args::GeneralArgs;
use super::cpu::CpuWatch;
use super::figures::{Percentiles, thousands};
use super::load_summary::LoadSummary;
use super::phase::{self, PhaseSummary};
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::traffic::{messages_load, send_messages};
use super::{fixtures, ledger};

/// How long the probe's jobs may take to finish after the last was sent: with fair sharing off
/// they wait behind the whole flood.
const FINISH_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the flooding tenant's backlog is counted while the probe runs.
const BACKLOG_SAMPLE: Duration = Duration::from_millis(200);
/// The tenant whose interactive jobs are measured; the flooding one is the stack's own.
const PROBE_TENANT: &str = "bench-probe";

#[derive(Debug, Clone, clap::Args)]
pub struct FairnessArgs {
    /// fairness: messages the flooding tenant sends, each to its own conversation.
    #[arg(
        id = "fairness-flood",
        long = "fairness-flood",
        default_value_t = 10_000
    )]
    pub flood: usize,
    /// fairness: the probe tenant's messages per second (open loop), idle and under the flood.
    #[arg(id = "fairness-rate", long = "fairness-rate", default_value_t = 10.0)]
    pub rate: f64,
    /// fairness: seconds the probe tenant sends for, each time.
    #[arg(
        id = "fairness-seconds",
        long = "fairness-seconds",
        default_value_t = 20.0
    )]
    pub seconds: f64,
    /// fairness: the mock provider's latency, in milliseconds.
    #[arg(
        id = "fairness-mock-ms",
        long = "fairness-mock-ms",
        default_value_t = 200
    )]
    pub mock_ms: u64,
    /// fairness: jobs each worker runs at once (CHATQ_WORKER_CONCURRENCY).
    #[arg(
        id = "fairness-worker-concurrency",
        long = "fairness-worker-concurrency",
        default_value_t = 64
    )]
    pub worker_concurrency: usize,
    /// fairness: CHATQ_FAIR_SHARE_QUEUED_JOBS; 4294967295 turns fair sharing off.
    #[arg(
        id = "fairness-share-queued-jobs",
        long = "fairness-share-queued-jobs",
        default_value_t = 8
    )]
    pub share_queued_jobs: u32,
}

/// The probe tenant's messages of one phase, and how long their jobs waited.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub phase: PhaseSummary,
    /// The probe's jobs, by status, once they had all ended.
    pub jobs: String,
    pub all_ended: bool,
    /// Per job, `created_at` → `started_at`.
    pub wait_ms: Percentiles,
}

/// The flooding tenant's backlog while the probe ran under it.
#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    /// The flooding tenant's queued jobs when the probe started.
    pub at_start: i64,
    /// The fewest counted while the probe sent (every 200 ms).
    pub least: i64,
    /// When the probe's last message had been answered.
    pub at_end: i64,
    /// Messages waiting on the interactive lane's front and overflow consumers when the probe
    /// started: where the backlog was queued.
    pub front_pending: u64,
    pub overflow_pending: u64,
    /// The flooding tenant's jobs that succeeded per second while the probe sent.
    pub ran_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FairnessResult {
    pub workers: usize,
    pub worker_concurrency: usize,
    pub mock_ms: u64,
    pub share_queued_jobs: u32,
    pub flood: usize,
    pub idle: Probe,
    /// The flooding tenant's messages, sent before the probe under the flood.
    pub flood_submit: LoadSummary,
    pub busy: Probe,
    pub backlog: Backlog,
}

/// Runs the scenario on a stack of its own (mock, ingress, workers).
///
/// # Errors
/// The stack does not start, or a step cannot run.
pub async fn run(
    args: &GeneralArgs,
    fairness: &FairnessArgs,
    services: &Services,
) -> anyhow::Result<FairnessResult> {
    let mock = MockPlan {
        ttft_ms: fairness.mock_ms,
        token_delay_ms: 0,
        tokens: 16,
    };
    // The flood comes from one key, as fast as it is answered: no per-key rate limit.
    let plan = StackPlan::new(args.workers, fairness.worker_concurrency, Some(mock))
        .without_key_rate_limit()
        .with_env("CHATQ_FAIR_SHARE_QUEUED_JOBS", fairness.share_queued_jobs);
    with_stack(services, &plan, async |stack: &mut Stack| {
        let pool = stack.scratch.pool.clone();
        let probe_key = stack.create_key(PROBE_TENANT).await?;
        let count = (fairness.rate * fairness.seconds).round().max(1.0) as usize;
        let idle_conversations =
            fixtures::create_conversations(&pool, probe_key.tenant, count).await?;
        let busy_conversations =
            fixtures::create_conversations(&pool, probe_key.tenant, count).await?;
        let flood_conversations =
            fixtures::create_conversations(&pool, stack.tenant, fairness.flood).await?;
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let send = |label: &str, conversations: &[Uuid]| {
            let mut plan = messages_load(label, stack, conversations, fairness.rate, 256);
            plan.api_key = Some(probe_key.api_key.clone());
            phase::run(plan, &watch, 202)
        };

        let (idle_phase, _) = send("fairness probe, idle queue (202)", &idle_conversations).await?;
        let idle = probe_waits(&pool, idle_phase, &idle_conversations).await?;

        let flood_load = send_messages(
            "fairness flood (202)",
            stack,
            &flood_conversations,
            args.concurrency,
        )?;
        let flood_submit = LoadSummary::measure(flood_load, &watch, 202).await?;

        let at_start = ledger::count_of_tenant(&pool, stack.tenant, "queued").await?;
        let [front_pending, overflow_pending] = interactive_pending(stack).await?;
        let ran_before = ledger::count_of_tenant(&pool, stack.tenant, "succeeded").await?;
        let started = Instant::now();
        let mut least = at_start;
        let busy_phase = tokio::select! {
            sent = send("fairness probe, under the flood (202)", &busy_conversations) => sent?.0,
            error = watch_backlog(&pool, stack.tenant, &mut least) => return Err(error),
        };
        let ran = ledger::count_of_tenant(&pool, stack.tenant, "succeeded").await? - ran_before;
        let backlog = Backlog {
            at_start,
            least,
            at_end: ledger::count_of_tenant(&pool, stack.tenant, "queued").await?,
            front_pending,
            overflow_pending,
            ran_per_second: ran as f64 / started.elapsed().as_secs_f64(),
        };
        let busy = probe_waits(&pool, busy_phase, &busy_conversations).await?;
        stack.check_alive()?;
        Ok(FairnessResult {
            workers: args.workers,
            worker_concurrency: fairness.worker_concurrency,
            mock_ms: fairness.mock_ms,
            share_queued_jobs: fairness.share_queued_jobs,
            flood: fairness.flood,
            idle,
            flood_submit,
            busy,
            backlog,
        })
    })
    .await
}

/// Waits for the probe's jobs to end and reads their queue waits.
async fn probe_waits(
    pool: &Db,
    phase: PhaseSummary,
    conversations: &[Uuid],
) -> anyhow::Result<Probe> {
    let jobs = ledger::jobs_of_conversations_ended(pool, conversations, FINISH_TIMEOUT).await?;
    let waits: Vec<f64> = jobs.iter().filter_map(|job| job.wait_ms).collect();
    Ok(Probe {
        phase,
        jobs: ledger::describe(&ledger::by_status(jobs.iter())),
        all_ended: jobs.iter().all(|job| ledger::is_terminal(&job.status)),
        wait_ms: Percentiles::of_millis(&waits)?,
    })
}

/// Counts the tenant's queued jobs until a count fails, keeping the fewest in `least`; runs
/// until the caller stops polling it, and returns only the error that stopped it.
async fn watch_backlog(pool: &Db, tenant: Uuid, least: &mut i64) -> anyhow::Error {
    loop {
        match ledger::count_of_tenant(pool, tenant, "queued").await {
            Ok(queued) => *least = (*least).min(queued),
            Err(error) => return error,
        }
        tokio::time::sleep(BACKLOG_SAMPLE).await;
    }
}

/// Messages pending on the interactive lane's consumers: the front, then the overflow.
async fn interactive_pending(stack: &Stack) -> anyhow::Result<[u64; 2]> {
    let topology = &stack.scratch.topology;
    let stream = stack
        .scratch
        .jetstream
        .get_stream(topology.jobs_stream())
        .await?;
    let mut pending = [0; 2];
    for (slot, name) in pending
        .iter_mut()
        .zip(topology.lane_consumer_names(Lane::Interactive))
    {
        *slot = stream.consumer_info(name).await?.num_pending;
    }
    Ok(pending)
}

impl FairnessResult {
    pub fn render(&self, out: &mut String) {
        let slots = self.workers * self.worker_concurrency;
        let nominal_slot_ms = self.mock_ms as f64 / slots.max(1) as f64;
        let _ = writeln!(
            out,
            "\nFAIRNESS: one tenant's interactive messages on an idle queue, then while another tenant's {} are queued; mock latency {} ms; {} workers × concurrency {}; CHATQ_FAIR_SHARE_QUEUED_JOBS {}",
            thousands(self.flood as f64),
            self.mock_ms,
            self.workers,
            self.worker_concurrency,
            self.share_queued_jobs,
        );
        self.idle.render(out);
        let flood = &self.flood_submit;
        let _ = writeln!(
            out,
            "  flood: {} messages from the other tenant, {} connections, in {:.1} s ({}/s); answers: {}; {}",
            thousands(flood.sent() as f64),
            flood.connections,
            flood.seconds,
            thousands(flood.per_second),
            flood.answers(),
            flood.latency_ms.brief(),
        );
        self.busy.render(out);
        let backlog = &self.backlog;
        let _ = writeln!(
            out,
            "      the flooding tenant's queued jobs while the probe sent: {} at the start ({} waiting in front, {} in the overflow), at least {}, {} at the end; they ran at {:.0} jobs/s, so one of the {slots} slots freed every {:.1} ms on average ({nominal_slot_ms:.1} ms at the mock's latency alone)",
            thousands(backlog.at_start as f64),
            thousands(backlog.front_pending as f64),
            thousands(backlog.overflow_pending as f64),
            thousands(backlog.least as f64),
            thousands(backlog.at_end as f64),
            backlog.ran_per_second,
            1000.0 / backlog.ran_per_second.max(1e-3),
        );
        if backlog.least == 0 {
            let _ = writeln!(
                out,
                "      THE BACKLOG RAN OUT while the probe sent: part of it measured a queue without the flood (a larger --fairness-flood keeps it queued)"
            );
        }
        let (idle, busy) = (&self.idle.wait_ms, &self.busy.wait_ms);
        let _ = writeln!(
            out,
            "  probe queue wait under the flood ÷ idle: p50 {:.2} ÷ {:.2} = {:.2}×, p99 {:.2} ÷ {:.2} = {:.2}×",
            busy.p50,
            idle.p50,
            busy.p50 / idle.p50.max(1e-3),
            busy.p99,
            idle.p99,
            busy.p99 / idle.p99.max(1e-3),
        );
    }
}

impl Probe {
    fn render(&self, out: &mut String) {
        self.phase.render(out);
        let _ = writeln!(
            out,
            "      probe jobs: {}{}",
            self.jobs,
            if self.all_ended {
                ""
            } else {
                " (NOT ALL ENDED)"
            }
        );
        let _ = writeln!(
            out,
            "      probe queue wait (created → started) ms: {}",
            self.wait_ms
        );
    }
}
