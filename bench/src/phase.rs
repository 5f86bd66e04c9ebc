//! One open-loop phase of a scenario, run and summarised for the report: how many requests, how
//! many could not start on time, the answers, latency (from sending, and from when each was due),
//! time to first content for streams, and the CPU meanwhile.

use std::fmt::Write as _;

use serde::Serialize;

use super::cpu::{CpuUsage, CpuWatch};
use super::figures::{Percentiles, cpu_cost_line, cpu_line, thousands};
use super::machine::LoadAverage;
use super::openloop::{self, OpenLoop, OpenLoopOutcome, Read};

/// An open-loop phase, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    pub label: String,
    pub requests: usize,
    /// Requests per second the schedule asked for.
    pub rate: f64,
    /// From the first request due to the last answer.
    pub seconds: f64,
    /// Requests that could not start on time (no free connection, or the generator behind).
    pub late: usize,
    /// How late requests started: `sent - due`.
    pub start_delay_ms: Percentiles,
    pub answers: String,
    /// Requests answered with the expected status (whole response read, no error).
    pub succeeded: usize,
    /// From sending to the whole answer, of the succeeded requests.
    pub latency_ms: Percentiles,
    /// From when each was due to the whole answer, of the succeeded requests.
    pub latency_from_due_ms: Percentiles,
    /// From sending to the first chunk carrying content (streams only).
    pub first_content_ms: Option<Percentiles>,
    /// Streams that ended with `data: [DONE]` (streams only).
    pub complete_streams: Option<usize>,
    pub load_average: LoadAverage,
    pub cpu: CpuUsage,
}

/// Runs one phase, watching the CPU, and returns its summary and every request's record.
///
/// # Errors
/// As [`openloop::run`].
pub async fn run(
    plan: OpenLoop,
    watch: &CpuWatch,
    expected_status: u16,
) -> anyhow::Result<(PhaseSummary, OpenLoopOutcome)> {
    let label = plan.label.clone();
    let rate = plan.rate;
    let streams = plan.read == Read::FirstContent;
    let load_average = LoadAverage::now();
    let cpu_start = watch.sample();
    let outcome = openloop::run(plan).await?;
    let cpu = watch.usage_since(&cpu_start);
    let ok: Vec<_> = outcome
        .with_status(expected_status)
        .filter(|sent| sent.error.is_none())
        .collect();
    let first_content = if streams {
        let times = ok.iter().filter_map(|sent| sent.time_to_first_content());
        Some(Percentiles::of_micros(&openloop::histogram(times)?))
    } else {
        None
    };
    let summary = PhaseSummary {
        label,
        requests: outcome.sent.len(),
        rate,
        seconds: outcome.elapsed.as_secs_f64(),
        late: outcome.late(),
        start_delay_ms: Percentiles::of_micros(&openloop::histogram(
            outcome.sent.iter().map(|s| s.sent.saturating_sub(s.due)),
        )?),
        answers: outcome.answers(),
        succeeded: ok.len(),
        latency_ms: Percentiles::of_micros(&openloop::histogram(ok.iter().map(|s| s.latency()))?),
        latency_from_due_ms: Percentiles::of_micros(&openloop::histogram(
            ok.iter().map(|s| s.latency_from_due()),
        )?),
        first_content_ms: first_content,
        complete_streams: streams.then(|| ok.iter().filter(|sent| sent.stream_done).count()),
        load_average,
        cpu,
    };
    Ok((summary, outcome))
}

impl PhaseSummary {
    /// The phase's lines of the report.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "  {}: {} requests at {}/s (open loop) over {:.1} s; could not start on time: {} (start delay {})",
            self.label,
            thousands(self.requests as f64),
            thousands(self.rate),
            self.seconds,
            self.late,
            self.start_delay_ms.brief(),
        );
        let _ = writeln!(out, "      answers: {}", self.answers);
        if let Some(first) = &self.first_content_ms {
            let _ = writeln!(out, "      time to first content ms: {first}");
        }
        if let Some(complete) = self.complete_streams {
            let _ = writeln!(
                out,
                "      streams complete (ended with [DONE]): {complete} of {}",
                self.succeeded
            );
        }
        let _ = writeln!(
            out,
            "      whole answer ms, from sending: {}",
            self.latency_ms
        );
        if self.late > 0 {
            let _ = writeln!(
                out,
                "      whole answer ms, from when due: {}",
                self.latency_from_due_ms
            );
        }
        let _ = writeln!(
            out,
            "      load average {}; CPU {}",
            self.load_average,
            cpu_line(&self.cpu)
        );
    }

    /// CPU per request of the phase.
    pub fn cpu_cost(&self) -> String {
        cpu_cost_line(
            &self.cpu,
            self.succeeded as f64 / self.cpu.seconds.max(1e-3),
        )
    }
}
