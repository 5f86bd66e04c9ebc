//! `idle`: `chatq serve` (the ingress and a worker in one process, as a small deployment runs it)
//! with nothing to do: its resident memory and the CPU it spends, just started and again after
//! some traffic, and what its idle timers cost Postgres and NATS.
//!
//! Each idle phase waits `--idle-seconds` with no request sent and reads the CPU of every
//! process over that time and the process's `VmRSS` at its end. Between the two phases,
//! `--idle-requests` non-streaming chat completions are sent at 50 a second, so the second phase
//! shows what serving left behind.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::args::GeneralArgs;
use crate::cpu::{CpuUsage, CpuWatch};
use crate::figures::cpu_line;
use crate::machine::status_kib;
use crate::openloop;
use crate::services::Services;
use crate::stack::{MockPlan, Stack, StackPlan, with_stack};
use crate::traffic::{Answer, completions_load};

/// The design's targets for an idle `chatq serve`.
pub const TARGET_RSS_MB: f64 = 30.0;
pub const TARGET_CORES: f64 = 0.01;
/// Completions per second between the two phases.
const TRAFFIC_RATE: f64 = 50.0;

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// idle: seconds of each idle phase.
    #[arg(id = "idle-seconds", long = "idle-seconds", default_value_t = 30.0)]
    pub seconds: f64,
    /// idle: chat completions sent between the two phases (at 50 a second).
    #[arg(id = "idle-requests", long = "idle-requests", default_value_t = 500)]
    pub requests: usize,
}

/// One idle phase.
#[derive(Debug, Clone, Serialize)]
pub struct IdlePhase {
    /// `chatq serve`'s resident memory at the end of the phase.
    pub rss_mb: f64,
    /// Cores `chatq serve` used, on average.
    pub serve_cores: f64,
    /// Every process, for what the idle server costs Postgres and NATS.
    pub cpu: CpuUsage,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub seconds: f64,
    pub requests: usize,
    /// Of `requests`, answered 200.
    pub answered: usize,
    pub just_started: IdlePhase,
    pub after_traffic: IdlePhase,
}

/// Runs the scenario on a stack of its own.
///
/// # Errors
/// The stack does not start, or the traffic cannot be sent.
pub async fn run(
    general: &GeneralArgs,
    idle: &IdleArgs,
    services: &Services,
) -> anyhow::Result<IdleResult> {
    let mock = MockPlan {
        ttft_ms: 0,
        token_delay_ms: 0,
        tokens: general.mock_tokens,
    };
    let plan = StackPlan::new(1, general.worker_concurrency, Some(mock))
        .without_key_rate_limit()
        .in_one_process();
    with_stack(services, &plan, async |stack: &mut Stack| {
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let seconds = idle.seconds.max(1.0);
        let just_started = idle_phase(stack, &watch, seconds).await;
        let traffic = completions_load(
            "idle: traffic between the phases",
            stack,
            stack.ingress,
            TRAFFIC_RATE,
            idle.requests as f64 / TRAFFIC_RATE,
            false,
            Answer::Text,
        );
        let outcome = openloop::run(traffic).await?;
        let after_traffic = idle_phase(stack, &watch, seconds).await;
        stack.check_alive()?;
        Ok(IdleResult {
            seconds,
            requests: outcome.sent.len(),
            answered: outcome
                .with_status(200)
                .filter(|sent| sent.error.is_none())
                .count(),
            just_started,
            after_traffic,
        })
    })
    .await
}

/// Waits `seconds` with nothing sent, and reads what the processes spent meanwhile.
async fn idle_phase(stack: &Stack, watch: &CpuWatch, seconds: f64) -> IdlePhase {
    let start = watch.sample();
    // Measuring idleness is waiting: nothing here waits for a condition.
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let cpu = watch.usage_since(&start);
    let serve_cores = cpu
        .by_process
        .iter()
        .find(|process| process.process == "serve")
        .map_or(0.0, |process| process.cores);
    let rss_mb = stack
        .pid("serve")
        .map_or(0.0, |pid| status_kib(pid, "VmRSS:") as f64 / 1024.0);
    IdlePhase {
        rss_mb,
        serve_cores,
        cpu,
    }
}

impl IdleResult {
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nIDLE: chatq serve (the ingress and one worker in one process) with nothing to do, {:.0} s each time",
            self.seconds
        );
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        for (when, phase) in [
            ("just started".to_owned(), &self.just_started),
            (
                format!(
                    "after {} completions ({} answered 200)",
                    self.requests, self.answered
                ),
                &self.after_traffic,
            ),
        ] {
            let _ = writeln!(
                out,
                "  {when}: resident {:.1} MB (target ≤ {TARGET_RSS_MB}: {}), CPU {:.4} cores (target ≤ {TARGET_CORES}: {})",
                phase.rss_mb,
                verdict(phase.rss_mb <= TARGET_RSS_MB),
                phase.serve_cores,
                verdict(phase.serve_cores <= TARGET_CORES),
            );
            let _ = writeln!(out, "      {}", cpu_line(&phase.cpu));
        }
    }
}
