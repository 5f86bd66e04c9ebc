//! The soak's report: a row per window, then the verdicts.

use std::fmt::Write as _;

use super::{LoadCount, SoakResult, SoakWindow, TARGET_GROWTH_MB};
use crate::figures::{cpu_cost_line, cpu_line, thousands};

impl SoakWindow {
    pub(super) fn render(&self, out: &mut String) {
        let count = |load: &LoadCount| {
            format!(
                "{} / {}",
                thousands(load.answered_as_expected as f64),
                thousands(load.sent as f64)
            )
        };
        let _ = writeln!(
            out,
            "  {:>6.1}  {:>15}  {:>8.2} / {:>7.2}  {:>13}  {:>13}  {:>5}  {:>10.1}  {:>9.1}  {:>5.2} / {:>5.2}",
            self.minutes,
            count(&self.completions),
            self.completion_ms.p50,
            self.completion_ms.p99,
            count(&self.conversations),
            count(&self.messages),
            self.late,
            self.ingress_rss_mb,
            self.worker_rss_mb,
            self.busy_cores,
            self.other_cores,
        );
        for (name, load) in [
            ("completions", &self.completions),
            ("conversations", &self.conversations),
            ("messages", &self.messages),
        ] {
            if let Some(answers) = &load.unexpected {
                let _ = writeln!(out, "          {name}: {answers}");
            }
        }
    }
}

impl SoakResult {
    pub fn render(&self, out: &mut String) {
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let _ = writeln!(
            out,
            "\nSOAK: {} min of mixed traffic on one ingress and one worker, mock latency {} ms; each second (open loop): {} non-streaming chat completions, {} new conversations, {} first messages",
            self.minutes,
            self.mock_ms,
            thousands(self.completions_rate),
            thousands(self.conversations_rate),
            thousands(self.conversations_rate),
        );
        let _ = writeln!(
            out,
            "  {:>6}  {:>15}  {:>18}  {:>13}  {:>13}  {:>5}  {:>10}  {:>9}  {:>13}",
            "minute",
            "completions 200",
            "p50 / p99 ms",
            "convers. 201",
            "messages 202",
            "late",
            "ingress MB",
            "worker MB",
            "cores / other",
        );
        for window in &self.windows {
            window.render(out);
        }
        let _ = writeln!(
            out,
            "  completions, whole run, ms: {} (the provider's own: {} ms)",
            self.completion_ms, self.mock_ms
        );
        if let Some(last) = self.windows.last() {
            let _ = writeln!(out, "  completions of the last window:");
            last.completion_stages.render(out);
        }
        let _ = writeln!(
            out,
            "  requests answered as expected: {} of {} (target: all): {}",
            thousands(self.answered_as_expected as f64),
            thousands(self.sent as f64),
            verdict(self.answered_as_expected == self.sent),
        );
        let _ = writeln!(
            out,
            "  jobs after the run{}: {}; succeeded {} of the {} the answers promise (target: all): {}",
            if self.drained { "" } else { " (NOT all ended)" },
            self.jobs,
            thousands(self.jobs_succeeded as f64),
            thousands(self.jobs_expected as f64),
            verdict(self.drained && self.jobs_succeeded >= self.jobs_expected),
        );
        let flat =
            self.ingress_growth_mb < TARGET_GROWTH_MB && self.worker_growth_mb < TARGET_GROWTH_MB;
        let _ = writeln!(
            out,
            "  resident memory over the second half: ingress {:+.1} MB, worker {:+.1} MB (target < {TARGET_GROWTH_MB} MB each): {}",
            self.ingress_growth_mb,
            self.worker_growth_mb,
            verdict(flat),
        );
        let _ = writeln!(out, "  CPU: {}", cpu_line(&self.cpu));
        let _ = writeln!(
            out,
            "  CPU per request, ms: {}",
            cpu_cost_line(
                &self.cpu,
                self.answered_as_expected as f64 / self.cpu.seconds.max(1e-3)
            )
        );
    }
}
