//! The report: what was measured, in one serialisable value (for `--json`), and its plain-text
//! form for people. Every chatq figure is printed beside the ceilings measured in the same run,
//! as a ratio, so a slow machine or a busy moment shows in both and a regression shows in the
//! ratio.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::{CpuUsage, CpuWatch};
use super::e2e::E2eResult;
use super::enqueue::EnqueueResult;
use super::fleet::FleetResult;
use super::lanes::LanesResult;
use super::limits::Limits;
use super::load::{self, Load};
use super::machine::{LoadAverage, Machine};
use super::overhead::OverheadResult;
use super::spike::SpikeResult;
use super::sse::SseResult;
use super::ttft::TtftResult;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run started, RFC 3339, UTC.
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub limits: Option<Limits>,
    pub enqueue: Option<EnqueueResult>,
    pub e2e: Option<E2eResult>,
    pub ttft: Option<TtftResult>,
    pub overhead: Option<OverheadResult>,
    pub sse: Option<SseResult>,
    pub fleet: Option<FleetResult>,
    pub spike: Option<SpikeResult>,
    pub lanes: Option<LanesResult>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of_micros(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }

    /// From values in milliseconds.
    ///
    /// # Errors
    /// The histogram cannot be created (not in practice).
    pub fn of_millis(values: &[f64]) -> anyhow::Result<Self> {
        let mut histogram = load::latency_histogram()?;
        for value in values {
            histogram.saturating_record((value * 1000.0).max(1.0) as u64);
        }
        Ok(Self::of_micros(&histogram))
    }
}

impl Percentiles {
    /// `p50 0.41  p99 1.20  max 3.05`: for figures that are not the point of the line.
    pub fn brief(&self) -> String {
        format!(
            "p50 {:.2}  p99 {:.2}  max {:.2} ms",
            self.p50, self.p99, self.max
        )
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

/// One HTTP load, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    pub label: String,
    pub connections: usize,
    /// The answer that counts as success (202 for enqueue, 200 for `/healthz`).
    pub expected_status: u16,
    pub succeeded: u64,
    pub seconds: f64,
    /// Successful answers per second.
    pub per_second: f64,
    pub by_status: BTreeMap<u16, u64>,
    pub io_errors: u64,
    pub first_io_error: Option<String>,
    pub latency_ms: Percentiles,
    /// At the start of the load.
    pub load_average: LoadAverage,
    pub cpu: CpuUsage,
}

impl LoadSummary {
    /// Runs the load, watching the CPU meanwhile.
    ///
    /// # Errors
    /// As [`load::run`].
    pub async fn measure(
        load: Load,
        watch: &CpuWatch,
        expected_status: u16,
    ) -> anyhow::Result<Self> {
        let label = load.label.clone();
        let connections = load.connections;
        let load_average = LoadAverage::now();
        let cpu_start = watch.sample();
        let outcome = load::run(load).await?;
        let cpu = watch.usage_since(&cpu_start);
        Ok(Self {
            label,
            connections,
            expected_status,
            succeeded: outcome.answered_with(expected_status),
            seconds: outcome.elapsed.as_secs_f64(),
            per_second: outcome.rate_of(expected_status),
            by_status: outcome.by_status,
            io_errors: outcome.io_errors,
            first_io_error: outcome.first_io_error,
            latency_ms: Percentiles::of_micros(&outcome.latency),
            load_average,
            cpu,
        })
    }

    /// Requests sent: answered with any status, or not at all.
    pub fn sent(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.io_errors
    }

    /// `202 × 30,000, 409 × 2`, and I/O errors if any.
    pub fn answers(&self) -> String {
        let mut parts: Vec<String> = self
            .by_status
            .iter()
            .map(|(status, count)| format!("{status} × {}", thousands(*count as f64)))
            .collect();
        if self.io_errors > 0 {
            let first = self.first_io_error.as_deref().unwrap_or("");
            parts.push(format!(
                "no answer × {} (first: {first})",
                thousands(self.io_errors as f64)
            ));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if rounded < 0.0 {
        grouped.insert(0, '-');
    }
    grouped
}

/// `machine 1.98 of 2 = ingress 0.95, postgres 0.62, ...` (processes under 0.01 left out).
pub fn cpu_line(cpu: &CpuUsage) -> String {
    let listed: f64 = cpu.by_process.iter().map(|p| p.cores).sum();
    let mut parts: Vec<String> = cpu
        .by_process
        .iter()
        .filter(|p| p.cores >= 0.01)
        .map(|p| format!("{} {:.2}", p.process, p.cores))
        .collect();
    let other = cpu.machine_busy_cores - listed;
    if other >= 0.01 {
        parts.push(format!("other {other:.2}"));
    }
    format!(
        "busy {:.2} of {} cores = {}",
        cpu.machine_busy_cores,
        cpu.machine_cores,
        parts.join(", ")
    )
}

/// CPU milliseconds each process spent per operation, and the rate the machine could sustain
/// if these processes had it to themselves and CPU were the only limit. On a shared machine
/// this is steadier than the rate itself, which moves with whatever else runs. The part of
/// Postgres that also serves other clients is shown but left out of the total.
pub fn cpu_cost_line(cpu: &CpuUsage, per_second: f64) -> String {
    if per_second <= 0.0 {
        return "no operations".into();
    }
    let cost = |cores: f64| cores / per_second * 1000.0;
    let (ours, shared): (Vec<_>, Vec<_>) = cpu
        .by_process
        .iter()
        .filter(|p| cost(p.cores) >= 0.005)
        .partition(|p| p.serves_this_run);
    let total: f64 = ours.iter().map(|p| cost(p.cores)).sum();
    let parts: Vec<String> = ours
        .iter()
        .map(|p| format!("{} {:.3}", p.process, cost(p.cores)))
        .collect();
    let left_out: Vec<String> = shared
        .iter()
        .map(|p| format!("; not counted: {} {:.3}", p.process, cost(p.cores)))
        .collect();
    let capacity = if total > 0.0 {
        thousands(cpu.machine_cores as f64 * 1000.0 / total)
    } else {
        "?".into()
    };
    format!(
        "{}; total {total:.3} ms, so about {capacity}/s if CPU-bound with the machine to itself{}",
        parts.join(", "),
        left_out.concat()
    )
}

/// `rate` as a fraction of each ceiling: `0.13 × HTTP GET /healthz, ...`.
pub fn ratios(rate: f64, limits: &Limits) -> Vec<(String, f64)> {
    let ratio = |limit: f64| if limit > 0.0 { rate / limit } else { 0.0 };
    let http = format!("HTTP {} of the ingress", limits.http.label);
    let mut all = vec![(http, ratio(limits.http.per_second))];
    let probes = [&limits.jetstream_sequential, &limits.jetstream_pipelined]
        .into_iter()
        .chain(limits.postgres.iter());
    all.extend(probes.map(|probe| (probe.name.clone(), ratio(probe.per_second))));
    all
}

impl Report {
    /// The report for people, as printed on standard output.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "chatq bench, {}", self.date);
        let _ = writeln!(out, "command: {}", self.command);
        let _ = writeln!(
            out,
            "machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}, Postgres {}, NATS {}",
            m.cpus, m.cpu_model, m.memory_gib, m.kernel, m.postgres_version, m.nats_version
        );
        if let Some(limits) = &self.limits {
            render_limits(&mut out, limits);
        }
        if let Some(enqueue) = &self.enqueue {
            enqueue.render(&mut out, self.limits.as_ref());
        }
        if let Some(e2e) = &self.e2e {
            e2e.render(&mut out, self.limits.as_ref());
        }
        if let Some(ttft) = &self.ttft {
            ttft.render(&mut out);
        }
        if let Some(overhead) = &self.overhead {
            overhead.render(&mut out);
        }
        if let Some(sse) = &self.sse {
            sse.render(&mut out);
        }
        if let Some(fleet) = &self.fleet {
            fleet.render(&mut out);
        }
        if let Some(spike) = &self.spike {
            spike.render(&mut out);
        }
        if let Some(lanes) = &self.lanes {
            lanes.render(&mut out);
        }
        out
    }
}

fn render_limits(out: &mut String, limits: &Limits) {
    let _ = writeln!(out, "\nLIMITS of this machine, measured in this run");
    let http = &limits.http;
    let _ = writeln!(
        out,
        "  {:<52} {:>9}/s",
        format!(
            "HTTP: {} of the ingress, {} connections",
            http.label, http.connections
        ),
        thousands(http.per_second),
    );
    let _ = writeln!(
        out,
        "      latency ms: {}; answers: {}",
        http.latency_ms,
        http.answers()
    );
    let _ = writeln!(
        out,
        "      load {}; CPU {}",
        http.load_average,
        cpu_line(&http.cpu)
    );
    let probes = [&limits.jetstream_sequential, &limits.jetstream_pipelined]
        .into_iter()
        .chain(limits.postgres.iter());
    for probe in probes {
        let errors = if probe.errors > 0 {
            format!(" ({} errors)", thousands(probe.errors as f64))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<52} {:>9}/s{errors}",
            probe.name,
            thousands(probe.per_second)
        );
        let _ = writeln!(
            out,
            "      load {}; CPU {}",
            probe.load_average,
            cpu_line(&probe.cpu)
        );
    }
}

/// The lines every scenario prints under its rate: the ratios to the limits.
pub fn render_ratios(out: &mut String, rate: f64, limits: Option<&Limits>) {
    let Some(limits) = limits else {
        let _ = writeln!(out, "  ratio to limits: not measured (--no-limits)");
        return;
    };
    let _ = writeln!(out, "  as a fraction of the limits measured in this run:");
    for (name, ratio) in ratios(rate, limits) {
        let _ = writeln!(out, "    {ratio:>6.3} of {name}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234.5), "1,235");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-4321.0), "-4,321");
    }
}
