//! `soak`: chatq under the mixed traffic of an ordinary day for an hour (by default), for what
//! only time shows: memory that keeps growing, requests that stop being answered.
//!
//! One stack: the ingress, one worker, the mock answering in 20 ms. Three open-loop loads run
//! side by side: non-streaming chat completions at 150/s, new conversations at 20/s
//! (`POST /v1/conversations`), and a first message at 20/s, each to a conversation made for it
//! beforehand (`POST /v1/conversations/{id}/messages`). The run is cut into windows (a minute by
//! default): a window's loads start together and it ends once every request of it has been
//! answered; then the resident memory (`VmRSS` in `/proc/<pid>/status`) of the ingress and of
//! the worker is read, and the cores the machine was busy over the window, with how many of them
//! went to no process the bench accounts for. At the end the bench waits for every job to end and counts them by
//! status.
//!
//! The targets: every request answered as expected (200, 201, 202), every job succeeded, and
//! each process's memory flat after the warm-up, growing by less than [`TARGET_GROWTH_MB`] over
//! the second half of the run (its last 30 minutes by default).

mod render;

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::args::GeneralArgs;
use crate::cpu::{CpuUsage, CpuWatch};
use crate::figures::{Percentiles, latency_histogram};
use crate::machine::status_kib;
use crate::openloop::{self, OpenLoop, OpenLoopOutcome};
use crate::services::Services;
use crate::stack::{MockPlan, Stack, StackPlan, with_stack};
use crate::stages::Stages;
use crate::traffic::{Answer, completions_load, conversations_load, messages_load};
use crate::{fixtures, ledger, progress};

/// How much each process's resident memory may grow over the second half of the run.
pub const TARGET_GROWTH_MB: f64 = 2.0;
/// How long the jobs may take to end after the last window.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections the first messages may use at once.
const MESSAGE_CONNECTIONS: usize = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// soak: minutes the traffic runs for.
    #[arg(id = "soak-minutes", long = "soak-minutes", default_value_t = 60.0)]
    pub minutes: f64,
    /// soak: non-streaming chat completions per second (open loop).
    #[arg(
        id = "soak-completions-rate",
        long = "soak-completions-rate",
        default_value_t = 150.0
    )]
    pub completions_rate: f64,
    /// soak: new conversations per second, and as many first messages per second (open loop).
    #[arg(
        id = "soak-conversations-rate",
        long = "soak-conversations-rate",
        default_value_t = 20.0
    )]
    pub conversations_rate: f64,
    /// soak: the mock provider's latency (time to the whole reply), in milliseconds.
    #[arg(id = "soak-mock-ms", long = "soak-mock-ms", default_value_t = 20)]
    pub mock_ms: u64,
    /// soak: seconds of each window, after which memory is read.
    #[arg(
        id = "soak-window-secs",
        long = "soak-window-secs",
        default_value_t = 60.0
    )]
    pub window_secs: f64,
}

/// One window of the run.
#[derive(Debug, Clone, Serialize)]
pub struct SoakWindow {
    /// From the start of the run to the end of this window.
    pub minutes: f64,
    pub completions: LoadCount,
    pub conversations: LoadCount,
    pub messages: LoadCount,
    /// Completions answered 200, from sending to the whole answer.
    pub completion_ms: Percentiles,
    /// Requests of the window that could not start on time.
    pub late: usize,
    pub ingress_rss_mb: f64,
    pub worker_rss_mb: f64,
    /// Cores busy on the machine over the window, and how many of them outside every process
    /// the bench accounts for (chatq, Postgres, NATS, the mock, the bench): a window slowed by
    /// something else on the machine shows here.
    pub busy_cores: f64,
    pub other_cores: f64,
    /// Where each completion's time went.
    pub completion_stages: Stages,
}

/// The requests of one load in one window, and how many were answered as expected.
#[derive(Debug, Clone, Serialize)]
pub struct LoadCount {
    pub sent: usize,
    pub answered_as_expected: usize,
    /// The answers, when some were not the expected ones (`status × count`).
    pub unexpected: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakResult {
    pub minutes: f64,
    pub completions_rate: f64,
    pub conversations_rate: f64,
    pub mock_ms: u64,
    pub windows: Vec<SoakWindow>,
    /// Every completion answered 200 in the run.
    pub completion_ms: Percentiles,
    pub sent: usize,
    pub answered_as_expected: usize,
    /// Jobs by status once the run drained (`status × count`).
    pub jobs: String,
    pub jobs_succeeded: u64,
    /// Jobs the answers promise: one per completion answered and per message accepted.
    pub jobs_expected: u64,
    pub drained: bool,
    /// Resident memory at the end of the run minus at its half-way point.
    pub ingress_growth_mb: f64,
    pub worker_growth_mb: f64,
    pub cpu: CpuUsage,
}

/// Runs the soak on a stack of its own.
///
/// # Errors
/// The stack does not start, or a load cannot run.
pub async fn run(
    general: &GeneralArgs,
    soak: &SoakArgs,
    services: &Services,
) -> anyhow::Result<SoakResult> {
    let mock = MockPlan {
        ttft_ms: soak.mock_ms,
        token_delay_ms: 0,
        tokens: general.mock_tokens,
    };
    let plan = StackPlan::new(1, general.worker_concurrency, Some(mock)).without_key_rate_limit();
    with_stack(services, &plan, async |stack: &mut Stack| {
        let window_secs = soak.window_secs.max(1.0);
        let windows = (soak.minutes * 60.0 / window_secs).ceil().max(1.0) as usize;
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let cpu_start = watch.sample();
        let started = Instant::now();
        let bar = progress::timed(
            "soak",
            Duration::from_secs_f64(windows as f64 * window_secs),
        );
        let mut whole_run = latency_histogram()?;
        let mut results = Vec::with_capacity(windows);
        for index in 0..windows {
            let window_start = watch.sample();
            let window = run_window(stack, soak, window_secs, index, &mut whole_run).await?;
            let cpu = watch.usage_since(&window_start);
            let accounted: f64 = cpu.by_process.iter().map(|p| p.cores).sum();
            let window = SoakWindow {
                minutes: started.elapsed().as_secs_f64() / 60.0,
                ingress_rss_mb: resident_mb(stack, "ingress"),
                worker_rss_mb: resident_mb(stack, "worker"),
                busy_cores: cpu.machine_busy_cores,
                other_cores: (cpu.machine_busy_cores - accounted).max(0.0),
                ..window
            };
            stack.check_alive()?;
            let answered: usize = results
                .iter()
                .chain(std::iter::once(&window))
                .map(|w: &SoakWindow| w.answered_as_expected())
                .sum();
            bar.update(answered as u64, started.elapsed());
            results.push(window);
        }
        bar.finish(
            results
                .iter()
                .map(|w| w.answered_as_expected() as u64)
                .sum(),
        );
        let drained = ledger::drain(&stack.scratch.pool, Instant::now(), DRAIN_TIMEOUT).await?;
        let cpu = watch.usage_since(&cpu_start);
        let jobs = ledger::count_by_status(&stack.scratch.pool).await?;
        let half = results
            .iter()
            .find(|w| w.minutes >= soak.minutes / 2.0)
            .or(results.first());
        let growth = |rss: fn(&SoakWindow) -> f64| match (half, results.last()) {
            (Some(half), Some(last)) => rss(last) - rss(half),
            _ => 0.0,
        };
        Ok(SoakResult {
            minutes: soak.minutes,
            completions_rate: soak.completions_rate,
            conversations_rate: soak.conversations_rate,
            mock_ms: soak.mock_ms,
            completion_ms: Percentiles::of_micros(&whole_run),
            sent: results.iter().map(SoakWindow::sent).sum(),
            answered_as_expected: results.iter().map(SoakWindow::answered_as_expected).sum(),
            jobs_succeeded: jobs.get("succeeded").copied().unwrap_or(0),
            jobs_expected: results
                .iter()
                .map(|w| {
                    (w.completions.answered_as_expected + w.messages.answered_as_expected) as u64
                })
                .sum(),
            jobs: ledger::describe(&jobs),
            drained,
            ingress_growth_mb: growth(|w| w.ingress_rss_mb),
            worker_growth_mb: growth(|w| w.worker_rss_mb),
            windows: results,
            cpu,
        })
    })
    .await
}

/// Sends one window's three loads side by side and waits for every answer.
async fn run_window(
    stack: &Stack,
    soak: &SoakArgs,
    window_secs: f64,
    index: usize,
    whole_run: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<SoakWindow> {
    let count = |rate: f64| (rate * window_secs).round().max(0.0) as usize;
    let first_messages = count(soak.conversations_rate);
    let targets =
        fixtures::create_conversations(&stack.scratch.pool, stack.tenant, first_messages).await?;
    let quiet = |mut load: OpenLoop| {
        load.progress = false;
        load
    };
    let completions = quiet(completions_load(
        &format!("soak completions {index}"),
        stack,
        stack.ingress,
        soak.completions_rate,
        window_secs,
        false,
        Answer::Text,
    ));
    let conversations = quiet(conversations_load(
        &format!("soak conversations {index}"),
        stack,
        count(soak.conversations_rate),
        soak.conversations_rate,
    ));
    let messages = quiet(messages_load(
        &format!("soak messages {index}"),
        stack,
        &targets,
        soak.conversations_rate,
        MESSAGE_CONNECTIONS,
    ));
    let (completions, conversations, messages) = tokio::try_join!(
        openloop::run(completions),
        openloop::run(conversations),
        openloop::run(messages),
    )?;
    let completion_stages = Stages::of(&stack.scratch.pool, &completions).await?;
    let answered: Vec<Duration> = completions
        .with_status(200)
        .filter(|sent| sent.error.is_none())
        .map(openloop::Sent::latency)
        .collect();
    for latency in &answered {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        whole_run.saturating_record(micros.max(1));
    }
    Ok(SoakWindow {
        minutes: 0.0,
        late: completions.late() + conversations.late() + messages.late(),
        completion_ms: Percentiles::of_micros(&openloop::histogram(answered.into_iter())?),
        completions: LoadCount::of(&completions, 200),
        conversations: LoadCount::of(&conversations, 201),
        messages: LoadCount::of(&messages, 202),
        ingress_rss_mb: 0.0,
        worker_rss_mb: 0.0,
        busy_cores: 0.0,
        other_cores: 0.0,
        completion_stages,
    })
}

/// A process's resident memory now, in MB; 0 when it cannot be read.
fn resident_mb(stack: &Stack, role: &str) -> f64 {
    stack
        .pid(role)
        .map_or(0.0, |pid| status_kib(pid, "VmRSS:") as f64 / 1024.0)
}

impl LoadCount {
    fn of(outcome: &OpenLoopOutcome, expected: u16) -> Self {
        let answered_as_expected = outcome
            .with_status(expected)
            .filter(|sent| sent.error.is_none())
            .count();
        let sent = outcome.sent.len();
        Self {
            sent,
            answered_as_expected,
            unexpected: (answered_as_expected < sent).then(|| outcome.answers()),
        }
    }
}

impl SoakWindow {
    fn loads(&self) -> [&LoadCount; 3] {
        [&self.completions, &self.conversations, &self.messages]
    }

    fn sent(&self) -> usize {
        self.loads().iter().map(|load| load.sent).sum()
    }

    fn answered_as_expected(&self) -> usize {
        self.loads()
            .iter()
            .map(|load| load.answered_as_expected)
            .sum()
    }
}
