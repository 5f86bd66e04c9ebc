//! One closed-loop load (see [`super::load`]) run and summarised for the report: its rate, the
//! answers by status, latency, and the CPU meanwhile. The open-loop counterpart is
//! [`super::phase`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::cpu::{CpuUsage, CpuWatch};
use super::figures::{Percentiles, thousands};
use super::load::{self, Load};
use super::machine::LoadAverage;

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
