//! # chatq-bench
//!
//! The benchmark harness: measures chatq on this machine and reports it beside the machine's own
//! limits, measured in the same run. It is an executable of its own, `chatq-bench`, usually
//! started as `chatq bench` (which hands over to it), so the `chatq` that is deployed carries no
//! load generator. It benchmarks the `chatq` executable beside its own (or `--chatq PATH`),
//! started as real processes, exactly as an operator runs them.
//!
//! # Layout
//!
//! From the bottom up; a module uses only those above it in this list, so no two depend on each
//! other and no scenario on another.
//!
//! - Foundations: [`progress`] (bars on standard error), [`machine`] (what the machine is),
//!   [`cpu`] (who used the CPU meanwhile), [`figures`] (percentiles, counts and CPU as people
//!   read them), [`sse_frames`] (reading event streams), [`args`] (the options the scenarios
//!   share).
//! - Traffic: [`load`], the closed-loop HTTP load generator (throughput), summarised as a
//!   [`load_summary`]; [`openloop`], the open-loop one (latency at a fixed arrival rate), run as
//!   a [`phase`]; [`subscribers`]: many SSE clients.
//! - The system under test: [`services`] (the shared Postgres and NATS, the chatq executable),
//!   [`scratch`] resources made for a run and removed after it, and the [`stack`] of real child
//!   processes (mock LLM, ingress, workers) that each scenario runs on.
//! - Around a stack: [`fixtures`] (conversations and job backlogs made through chatq's own
//!   database functions); [`ledger`] (what the database says happened to the jobs); [`mock`]
//!   (what the provider saw); [`traffic`] (the requests the scenarios send to chatq).
//! - [`limits`]: the ceilings (HTTP, JetStream publish, Postgres INSERT), and every figure's
//!   ratio to them.
//! - The scenarios: [`enqueue`], [`e2e`] (throughput), [`ttft`], [`overhead`] (latency added to
//!   the provider's), [`sse`] (event streams held by one ingress), [`fleet`] (scaling workers
//!   under a provider limit), [`spike`] (a burst against a limit), [`lanes`] (interactive jobs
//!   beside a batch), [`fairness`] (one tenant's interactive jobs while another floods the
//!   queue), [`cache`] (a workload half of repeated deterministic prompts), [`history`] (one
//!   conversation grown to thousands of messages), [`webhooks`] (delivery latency after
//!   commit), [`completions`] (chat completions per second, closed loop, beside other
//!   OpenAI-compatible servers), [`idle`] (`chatq serve` with nothing to do), [`soak`] (an hour of mixed traffic: answers and memory over
//!   time). Each renders its own part of the report.
//! - [`report`]: the whole result, as text for people and as JSON (`--json`); and this file,
//!   which reads the command line and runs the chosen scenarios.
//! - The regression guard: [`guard`] (figures as ratios to the same run's limits, compared with
//!   a committed baseline) and [`guard_run`] (the short benchmark `scripts/test` runs).
//!
//! Each scenario runs on a stack of its own, so one scenario's queue never feeds another's
//! workers.

mod args;
mod cache;
mod completions;
mod cpu;
mod e2e;
mod enqueue;
mod fairness;
mod figures;
mod fixtures;
mod fleet;
mod guard;
mod guard_run;
mod history;
mod idle;
mod lanes;
mod ledger;
mod limits;
mod load;
mod load_summary;
mod machine;
mod mock;
mod openloop;
mod overhead;
mod phase;
mod progress;
mod report;
mod scratch;
mod services;
mod soak;
mod spike;
mod sse;
mod sse_frames;
mod stack;
mod stages;
mod subscribers;
mod traffic;
mod ttft;
mod webhooks;

use anyhow::Context as _;

use self::args::GeneralArgs;
use self::report::Report;
use self::services::Services;
use self::stack::{Stack, StackPlan, with_stack};

/// What `chatq bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The limits, then every scenario below in turn.
    All,
    /// Only the machine's limits: HTTP, JetStream publish, Postgres INSERT.
    Limits,
    /// Messages accepted (202) per second, without workers.
    Enqueue,
    /// Jobs completed per second, end to end, against the mock provider.
    E2e,
    /// Time to the first streamed token, through chatq and straight to the provider.
    Ttft,
    /// Latency added to the provider's at a fixed arrival rate (open loop).
    Overhead,
    /// Concurrent event streams one ingress holds, and its memory.
    Sse,
    /// Throughput with 1, 2, 4 worker processes, without and with a provider limit.
    Fleet,
    /// A burst of requests against a provider limit: accepted or shed, none lost, drained at the limit.
    Spike,
    /// Interactive queue wait while a large batch runs.
    Lanes,
    /// One tenant's interactive queue wait on an idle queue, then while another tenant floods
    /// the queue with 10,000 messages.
    Fairness,
    /// Half the requests repeat an earlier deterministic prompt: provider calls the reply cache
    /// saves, and the latency of a hit beside a miss.
    Cache,
    /// One conversation grown turn by turn to 5,000 messages: a turn's latency and the rows it
    /// reads, at the start and at the end.
    History,
    /// How long after a result commits its webhook arrives, at a fixed arrival rate.
    Webhooks,
    /// Non-streaming chat completions per second, closed loop, through chatq, straight to the
    /// mock, and through any --completions-peer (another OpenAI-compatible server).
    Completions,
    /// `chatq serve` with nothing to do, just started and after some traffic: its memory and CPU.
    Idle,
    /// An hour (--soak-minutes) of mixed traffic at a steady rate: every request answered, and
    /// the memory of the ingress and the worker flat after the warm-up. Not part of `all`.
    Soak,
    /// Not a scenario: the short benchmark `scripts/test` runs, compared with a committed
    /// baseline (--guard-baseline); fails when a figure fell more than 30 %.
    Guard,
}

/// Benchmark chatq on this machine, beside the machine's own limits measured in the same run.
///
/// The defaults finish each scenario in a minute or two.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chatq-bench",
    version,
    about,
    long_about,
    args_override_self = true
)]
pub struct BenchArgs {
    /// What to measure. Every scenario but `limits` measures the limits first (see --no-limits).
    #[arg(value_enum, default_value = "all")]
    pub scenario: Scenario,
    #[command(flatten)]
    pub general: GeneralArgs,
    #[command(flatten, next_help_heading = "ttft")]
    pub ttft: ttft::TtftArgs,
    #[command(flatten, next_help_heading = "overhead")]
    pub overhead: overhead::OverheadArgs,
    #[command(flatten, next_help_heading = "sse")]
    pub sse: sse::SseArgs,
    #[command(flatten, next_help_heading = "fleet")]
    pub fleet: fleet::FleetArgs,
    #[command(flatten, next_help_heading = "spike")]
    pub spike: spike::SpikeArgs,
    #[command(flatten, next_help_heading = "lanes")]
    pub lanes: lanes::LanesArgs,
    #[command(flatten, next_help_heading = "fairness")]
    pub fairness: fairness::FairnessArgs,
    #[command(flatten, next_help_heading = "cache")]
    pub cache: cache::CacheArgs,
    #[command(flatten, next_help_heading = "history")]
    pub history: history::HistoryArgs,
    #[command(flatten, next_help_heading = "webhooks")]
    pub webhooks: webhooks::WebhooksArgs,
    #[command(flatten, next_help_heading = "completions")]
    pub completions: completions::CompletionsArgs,
    #[command(flatten, next_help_heading = "idle")]
    pub idle: idle::IdleArgs,
    #[command(flatten, next_help_heading = "soak")]
    pub soak: soak::SoakArgs,
    #[command(flatten, next_help_heading = "guard")]
    pub guard: guard_run::GuardArgs,
}

/// Runs the chosen scenarios, prints the report, and writes it as JSON if asked.
///
/// # Errors
/// A service is unreachable, a stack fails to start, or a measurement cannot run.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // sqlx warns about slow statements, and dropping a database is one: not news here.
    chatq_common::telemetry::init(chatq_common::settings::LogFormat::Pretty, "warn,sqlx=error");
    let general = &args.general;
    if args.scenario == Scenario::Guard {
        return guard_run::run(general, &args.guard).await;
    }
    let services = Services::from_args(general)?;
    let machine = describe_machine(&services).await?;
    let mut report = Report {
        date: now_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        limits: None,
        enqueue: None,
        e2e: None,
        ttft: None,
        overhead: None,
        sse: None,
        fleet: None,
        spike: None,
        lanes: None,
        fairness: None,
        cache: None,
        history: None,
        webhooks: None,
        completions: None,
        idle: None,
        soak: None,
    };
    let wants = |scenario| args.scenario == Scenario::All || args.scenario == scenario;
    if args.scenario == Scenario::Limits || !general.no_limits {
        let plan = StackPlan::new(0, general.worker_concurrency, None);
        let limits = with_stack(&services, &plan, async |stack: &mut Stack| {
            limits::measure(general, stack).await
        })
        .await?;
        report.limits = Some(limits);
    }
    if wants(Scenario::Enqueue) {
        report.enqueue = Some(enqueue::run(general, &services).await?);
    }
    if wants(Scenario::E2e) {
        report.e2e = Some(e2e::run(general, &services).await?);
    }
    if wants(Scenario::Ttft) {
        report.ttft = Some(ttft::run(general, &args.ttft, &services).await?);
    }
    if wants(Scenario::Overhead) {
        report.overhead = Some(overhead::run(general, &args.overhead, &services).await?);
    }
    if wants(Scenario::Sse) {
        report.sse = Some(sse::run(general, &args.sse, &services).await?);
    }
    if wants(Scenario::Fleet) {
        report.fleet = Some(fleet::run(&args.fleet, &services).await?);
    }
    if wants(Scenario::Spike) {
        report.spike = Some(spike::run(general, &args.spike, &services).await?);
    }
    if wants(Scenario::Lanes) {
        report.lanes = Some(lanes::run(general, &args.lanes, &services).await?);
    }
    if wants(Scenario::Fairness) {
        report.fairness = Some(fairness::run(general, &args.fairness, &services).await?);
    }
    if wants(Scenario::Cache) {
        report.cache = Some(cache::run(general, &args.cache, &services).await?);
    }
    if wants(Scenario::History) {
        report.history = Some(history::run(general, &args.history, &services).await?);
    }
    if wants(Scenario::Completions) {
        report.completions = Some(completions::run(general, &args.completions, &services).await?);
    }
    if wants(Scenario::Webhooks) {
        report.webhooks = Some(webhooks::run(general, &args.webhooks, &services).await?);
    }
    if wants(Scenario::Idle) {
        report.idle = Some(idle::run(general, &args.idle, &services).await?);
    }
    // An hour long: only when asked for by name.
    if args.scenario == Scenario::Soak {
        report.soak = Some(soak::run(general, &args.soak, &services).await?);
    }
    let text = report.render();
    #[expect(clippy::print_stdout, reason = "the report is the command's output")]
    {
        print!("{text}");
    }
    if let Some(path) = &general.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn describe_machine(services: &Services) -> anyhow::Result<machine::Machine> {
    let pool = sqlx::PgPool::connect(&services.postgres_url)
        .await
        .with_context(|| "cannot reach Postgres at --postgres-url")?;
    let postgres_version =
        sqlx::query_scalar!(r#"SELECT current_setting('server_version') AS "version!""#)
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    let nats = chatq_common::nats::connect(&services.nats_servers()?, "bench").await?;
    let nats_version = nats.server_info().version;
    Ok(machine::describe(postgres_version, nats_version))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
