//! `guard`: the short benchmark `scripts/test` runs, and its verdict against the baseline
//! committed in the repository (`bench/baseline.json`).
//!
//! One attempt is the limits (shorter probes), then small runs of enqueue, e2e and completions,
//! each on its own stack as in a full run; the figures are their rates as fractions of the
//! limits ([`super::guard`]). The sizes are fixed here, not taken from the command line, so every
//! run measures what the baseline measured. When a figure falls too far, the whole attempt is
//! run once more and each figure judged at the better of the two, so one noisy moment does not
//! fail the suite but a change that makes chatq dearer does.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::args::GeneralArgs;
use super::completions::{self, CompletionsArgs};
use super::guard::{self, Baseline, Figures};
use super::limits::{self, JETSTREAM_IN_FLIGHT, Limits, POSTGRES_CLIENTS};
use super::machine::Machine;
use super::services::Services;
use super::stack::{Stack, StackPlan, with_stack};
use super::{e2e, enqueue};

/// Seconds of each limits probe.
const PROBE_SECS: f64 = 2.0;
/// enqueue: requests measured.
const ENQUEUE_REQUESTS: usize = 4_000;
/// e2e: jobs measured.
const E2E_JOBS: usize = 2_000;
/// enqueue and e2e: requests or jobs sent before measuring.
const WARM_UP: usize = 400;
/// completions: seconds measured through chatq (after the scenario's warm-up).
const COMPLETIONS_SECS: f64 = 5.0;
/// Attempts whose median `--guard-write-baseline` writes.
const BASELINE_ATTEMPTS: usize = 3;
/// The figures `--guard-write-baseline` puts in the baseline: for each scenario, its steadiest
/// ratio from run to run (over thirteen attempts on a 2-core machine with a load average of 4–11,
/// none more than 14 % below its median; BENCHMARKS.md, "The regression guard"). The others are
/// shown beside them, not judged.
const GUARDED: [&str; 3] = [
    "enqueue ÷ Postgres INSERT ×64",
    "e2e ÷ HTTP",
    "completions ÷ HTTP",
];

#[derive(Debug, Clone, clap::Args)]
pub struct GuardArgs {
    /// guard: the baseline to compare with.
    #[arg(
        id = "guard-baseline",
        long = "guard-baseline",
        value_name = "FILE",
        default_value = "bench/baseline.json"
    )]
    pub baseline: PathBuf,
    /// guard: measure three times and write each figure's median as the new baseline, instead
    /// of comparing.
    #[arg(id = "guard-write-baseline", long = "guard-write-baseline")]
    pub write_baseline: bool,
}

/// What `--json` records of a guard run.
#[derive(Debug, Clone, Serialize)]
pub struct GuardReport {
    pub attempts: Vec<Attempt>,
    pub findings: Vec<String>,
}

/// One attempt's rates and figures.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub seconds: f64,
    /// Per second: each chatq scenario's rate, then each ceiling's.
    pub rates: Vec<(String, f64)>,
    pub figures: Figures,
}

/// Runs the guard: measures, then compares with the baseline (retrying once) or writes it.
///
/// # Errors
/// A measurement cannot run, the baseline cannot be read or written, or a figure fell.
pub async fn run(general: &GeneralArgs, args: &GuardArgs) -> anyhow::Result<()> {
    // The baseline first: a run that cannot be judged is not worth measuring.
    let baseline = if args.write_baseline {
        None
    } else {
        let baseline = Baseline::read(&args.baseline)?;
        anyhow::ensure!(
            baseline.build == guard::this_build(),
            "{} was measured with a {} build and this is a {} build: their ratios do not compare",
            args.baseline.display(),
            baseline.build,
            guard::this_build()
        );
        Some(baseline)
    };
    let services = &Services::from_args(general)?;
    let machine = &super::describe_machine(services).await?;
    let sized = sized(general);
    let Some(baseline) = baseline else {
        return write_baseline(&args.baseline, &sized, services, machine).await;
    };
    let first = measure(&sized, services).await?;
    let mut findings = guard::compare(&baseline.figures, &first.figures);
    print(&verdict("guard", &baseline.figures, &first));
    let mut attempts = vec![first];
    if !findings.is_empty() {
        print(
            "  a figure fell too far: measuring once more, each figure judged at its better attempt\n",
        );
        let second = measure(&sized, services).await?;
        let best = guard::best_of(&attempts[0].figures, &second.figures);
        findings = guard::compare(&baseline.figures, &best);
        print(&verdict("guard, retried", &baseline.figures, &second));
        attempts.push(second);
    }
    let findings: Vec<String> = findings.iter().map(ToString::to_string).collect();
    if let Some(path) = &general.json {
        let report = GuardReport {
            attempts,
            findings: findings.clone(),
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    anyhow::ensure!(
        findings.is_empty(),
        "the benchmark guard failed against {} ({}):\n  {}",
        args.baseline.display(),
        baseline.measured,
        findings.join("\n  ")
    );
    print(&format!(
        "  guard passed: no figure fell more than {:.0} % below the baseline\n",
        guard::TOLERANCE * 100.0
    ));
    Ok(())
}

/// Measures [`BASELINE_ATTEMPTS`] times and writes each guarded figure's median to `path`.
async fn write_baseline(
    path: &std::path::Path,
    sized: &GeneralArgs,
    services: &Services,
    machine: &Machine,
) -> anyhow::Result<()> {
    let mut attempts = Vec::new();
    for round in 1..=BASELINE_ATTEMPTS {
        let attempt = measure(sized, services).await?;
        let title = format!("baseline attempt {round} of {BASELINE_ATTEMPTS}");
        print(&verdict(&title, &Figures::new(), &attempt));
        attempts.push(attempt.figures);
    }
    let baseline = Baseline {
        about: format!(
            "Figures of `chatq-bench guard`, which scripts/test runs: chatq's rates as fractions \
             of the limits measured in the same run. A figure more than {:.0} % below its value \
             here fails the suite. Each is the median of {BASELINE_ATTEMPTS} attempts. Refresh \
             after a change that moves them on purpose: scripts/test builds the binaries, then \
             `target/debug/chatq-bench guard --guard-write-baseline` (see BENCHMARKS.md).",
            guard::TOLERANCE * 100.0
        ),
        measured: format!(
            "{}; {} CPUs ({}), Linux {}, Postgres {}, NATS {}",
            super::now_rfc3339(),
            machine.cpus,
            machine.cpu_model,
            machine.kernel,
            machine.postgres_version,
            machine.nats_version
        ),
        build: guard::this_build().into(),
        figures: guard::median_of(&attempts)
            .into_iter()
            .filter(|(name, _)| GUARDED.contains(&name.as_str()))
            .collect(),
    };
    baseline.write(path)?;
    print(&format!("baseline written to {}\n", path.display()));
    Ok(())
}

/// The command line's settings with the guard's own sizes.
fn sized(general: &GeneralArgs) -> GeneralArgs {
    GeneralArgs {
        no_limits: false,
        requests: ENQUEUE_REQUESTS,
        jobs: E2E_JOBS,
        warmup: WARM_UP,
        concurrency: 64,
        workers: 1,
        worker_concurrency: 256,
        duration: PROBE_SECS,
        mock_ttft_ms: 0,
        mock_token_delay_ms: 0,
        mock_tokens: 16,
        json: None,
        ..general.clone()
    }
}

/// One attempt: the limits, then enqueue, e2e and completions.
async fn measure(args: &GeneralArgs, services: &Services) -> anyhow::Result<Attempt> {
    let started = Instant::now();
    let plan = StackPlan::new(0, args.worker_concurrency, None);
    let limits = with_stack(services, &plan, async |stack: &mut Stack| {
        limits::measure(args, stack).await
    })
    .await?;
    let enqueue = enqueue::run(args, services).await?;
    let e2e = e2e::run(args, services).await?;
    let completions_args = CompletionsArgs {
        seconds: COMPLETIONS_SECS,
        mock_ms: 0,
        mock_addr: None,
        peers: Vec::new(),
        peer_key: None,
        no_direct: true,
    };
    let completions = completions::run(args, &completions_args, services).await?;
    let scenarios = [
        ("enqueue", enqueue.load.per_second),
        ("e2e", e2e.completed_per_second),
        ("completions", completions.chatq.per_second),
    ];
    let mut rates: Vec<(String, f64)> = scenarios
        .iter()
        .map(|(name, rate)| ((*name).to_owned(), *rate))
        .collect();
    rates.extend(
        ceilings(&limits)
            .into_iter()
            .map(|(name, rate)| (format!("limit: {name}"), rate)),
    );
    Ok(Attempt {
        seconds: started.elapsed().as_secs_f64(),
        rates,
        figures: figures(&scenarios, &limits),
    })
}

/// The ceilings, by the short names the figures use.
fn ceilings(limits: &Limits) -> Vec<(String, f64)> {
    let mut all = vec![
        ("HTTP".to_owned(), limits.http.per_second),
        (
            "JetStream in turn".to_owned(),
            limits.jetstream_sequential.per_second,
        ),
        (
            format!("JetStream {JETSTREAM_IN_FLIGHT} in flight"),
            limits.jetstream_pipelined.per_second,
        ),
    ];
    for (clients, probe) in POSTGRES_CLIENTS.iter().zip(&limits.postgres) {
        all.push((format!("Postgres INSERT ×{clients}"), probe.per_second));
    }
    all
}

/// Each scenario's rate divided by each ceiling: `e2e ÷ HTTP`. Only those in the baseline are
/// judged; the others are shown, so a steadier one can be chosen when the baseline is refreshed.
fn figures(scenarios: &[(&str, f64)], limits: &Limits) -> Figures {
    let mut figures = Figures::new();
    for (scenario, rate) in scenarios {
        for (ceiling, limit) in ceilings(limits) {
            if limit > 0.0 {
                figures.insert(format!("{scenario} ÷ {ceiling}"), rate / limit);
            }
        }
    }
    figures
}

fn verdict(title: &str, baseline: &Figures, attempt: &Attempt) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n{title}: {:.0} s", attempt.seconds);
    for (name, rate) in &attempt.rates {
        let _ = writeln!(out, "  {name}: {}/s", super::figures::thousands(*rate));
    }
    let _ = writeln!(out, "  figure, baseline, this run, change:");
    out.push_str(&guard::table(baseline, &attempt.figures));
    out
}

fn print(text: &str) {
    #[expect(
        clippy::print_stdout,
        reason = "the guard's report is the command's output"
    )]
    {
        print!("{text}");
    }
}
