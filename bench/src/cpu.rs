//! Who used the CPU during a measurement: each chatq process the bench started, the bench itself,
//! the Postgres backends serving the run's scratch database, the rest of Postgres, NATS, and the
//! machine as a whole, read from `/proc`.
//!
//! With everything on one 2-core machine, throughput is bound by whichever process saturates
//! first; this is the evidence for saying which. Postgres backends are told apart by the
//! database in their process title, so work other clients give the same server is not charged
//! to chatq; Postgres's own background processes (WAL writer, checkpointer) and NATS are shared,
//! so their figures include whatever else used them meanwhile. The machine's total says how
//! much of the CPU was busy with anything at all. On a system without `/proc` every figure is
//! zero.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// Postgres backends serving the run's scratch database.
const POSTGRES_RUN: &str = "postgres (this run's backends)";
/// Every other Postgres process: background processes and other clients' backends.
const POSTGRES_OTHER: &str = "postgres (background, other clients)";
const NATS: &str = "nats-server";

/// The processes to account for.
#[derive(Debug, Clone)]
pub struct CpuWatch {
    /// Label and pid of each process the bench knows by pid; several pids may share a label
    /// (every worker is counted as "worker").
    processes: Vec<(String, u32)>,
    /// The scratch database, whose backends are counted apart from the rest of Postgres.
    database: String,
    ticks_per_second: f64,
}

/// CPU time consumed so far, by label, and the machine's counters.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    ticks: BTreeMap<String, u64>,
    machine_busy: u64,
    machine_total: u64,
}

/// Cores busy, on average, between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUsage {
    pub seconds: f64,
    /// Cores the machine has.
    pub machine_cores: usize,
    /// Cores busy with anything, on average (at most `machine_cores`).
    pub machine_busy_cores: f64,
    /// Cores used by each labelled process or group of processes, busiest first.
    pub by_process: Vec<ProcessCpu>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    pub process: String,
    pub cores: f64,
    /// False for the part of Postgres that also serves other clients, which per-operation costs
    /// leave out.
    pub serves_this_run: bool,
}

impl CpuWatch {
    /// Watches these processes, the bench itself, Postgres (the backends of `database` apart)
    /// and NATS.
    pub fn new(processes: Vec<(String, u32)>, database: &str) -> Self {
        let mut processes = processes;
        processes.push(("bench (load generator)".into(), std::process::id()));
        Self {
            processes,
            database: database.to_owned(),
            ticks_per_second: clock_ticks_per_second(),
        }
    }

    /// The label a shared service's process is counted under, if it is one.
    fn service_label(&self, pid: u32, command: &str) -> Option<&'static str> {
        match command {
            "nats-server" => Some(NATS),
            "postgres" => {
                // A backend's title: "postgres: 15/main: user database host(port) state".
                let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let title = String::from_utf8_lossy(&title);
                let ours = title.split_whitespace().any(|word| word == self.database);
                Some(if ours { POSTGRES_RUN } else { POSTGRES_OTHER })
            }
            _ => None,
        }
    }

    pub fn sample(&self) -> CpuSample {
        let mut ticks: BTreeMap<String, u64> = BTreeMap::new();
        for (label, pid) in &self.processes {
            let used = process_ticks(*pid).map_or(0, |(_, used)| used);
            *ticks.entry(label.clone()).or_default() += used;
        }
        for label in [POSTGRES_RUN, POSTGRES_OTHER, NATS] {
            ticks.entry(label.to_owned()).or_default();
        }
        for pid in all_pids() {
            let Some((command, used)) = process_ticks(pid) else {
                continue;
            };
            if let Some(label) = self.service_label(pid, &command) {
                *ticks.entry(label.to_owned()).or_default() += used;
            }
        }
        let (machine_busy, machine_total) = machine_ticks().unwrap_or((0, 0));
        CpuSample {
            at: Instant::now(),
            ticks,
            machine_busy,
            machine_total,
        }
    }

    /// Average use from `start` until now.
    pub fn usage_since(&self, start: &CpuSample) -> CpuUsage {
        let end = self.sample();
        let seconds = end.at.duration_since(start.at).as_secs_f64().max(1e-3);
        let machine_cores = std::thread::available_parallelism().map_or(1, usize::from);
        let cores_of = |ticks: u64| ticks as f64 / self.ticks_per_second / seconds;
        let mut by_process: Vec<ProcessCpu> = end
            .ticks
            .iter()
            .map(|(label, used)| {
                let before = start.ticks.get(label).copied().unwrap_or(0);
                ProcessCpu {
                    process: label.clone(),
                    cores: cores_of(used.saturating_sub(before)),
                    serves_this_run: label != POSTGRES_OTHER,
                }
            })
            .collect();
        by_process.sort_by(|a, b| b.cores.total_cmp(&a.cores));
        let total = end.machine_total.saturating_sub(start.machine_total);
        let busy = end.machine_busy.saturating_sub(start.machine_busy);
        let machine_busy_cores = if total > 0 {
            busy as f64 / total as f64 * machine_cores as f64
        } else {
            0.0
        };
        CpuUsage {
            seconds,
            machine_cores,
            machine_busy_cores,
            by_process,
        }
    }
}

/// `USER_HZ`, the unit of `/proc/<pid>/stat` times: 100 on every Linux in practice; asked of
/// `getconf` to be sure.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// A process's command name and its user + system CPU time (all threads), in clock ticks.
fn process_ticks(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let command = stat.get(open + 1..close)?.to_owned();
    // After the name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((command, utime + stime))
}

/// The machine's busy and total CPU time, from the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_and_uses_some_cpu() {
        let (command, _) = process_ticks(std::process::id()).unwrap();
        assert!(!command.is_empty());
        let watch = CpuWatch::new(Vec::new(), "no_such_database");
        let start = watch.sample();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let usage = watch.usage_since(&start);
        assert!(usage.machine_busy_cores > 0.0, "{usage:?}");
        assert!(
            usage
                .by_process
                .iter()
                .any(|p| p.process.starts_with("bench"))
        );
    }
}
