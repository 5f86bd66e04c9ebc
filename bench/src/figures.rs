//! The figures every scenario reports, and how they read for people: latency percentiles from a
//! histogram, counts with thousands separators, and who used the CPU (and how much per
//! operation). The scenarios share these; none of them depends on another scenario.

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::CpuUsage;

/// A histogram for latencies in microseconds, from 1 µs to 5 minutes, at 3 significant digits.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 300_000_000, 3).context("cannot create a latency histogram")
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
        let mut histogram = latency_histogram()?;
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
