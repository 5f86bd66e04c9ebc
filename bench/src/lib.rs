//! # chatq-bench
//!
//! The benchmark harness: measures chatq on this machine and reports it beside the machine's own
//! limits, measured in the same run. It is an executable of its own, `chatq-bench`, usually
//! started as `chatq bench` (which hands over to it), so the `chatq` that is deployed carries no
//! load generator. It benchmarks the `chatq` executable next to its own (or `--chatq PATH`),
//! started as real processes.
//!
//! # Layout
//!
//! - [`stack`]: the system under test as real child processes (mock LLM, ingress, workers), with
//!   [`scratch`] resources (database, NATS namespace) made for the run and removed after it.
//! - [`load`]: the closed-loop HTTP load generator (throughput); [`openloop`]: the open-loop one
//!   (latency at a fixed arrival rate), run as a [`phase`]; [`subscribers`]: many SSE clients;
//!   [`sse_frames`]: reading event streams; [`progress`]: bars on standard error.
//! - [`limits`]: the ceilings (HTTP, JetStream publish, Postgres INSERT).
//! - The scenarios: [`enqueue`], [`e2e`] (throughput), [`ttft`], [`overhead`] (latency added to
//!   the provider's), [`sse`] (event streams held by one ingress), [`fleet`] (scaling workers
//!   under a provider limit), [`spike`] (a burst against a limit), [`lanes`] (interactive jobs
//!   beside a batch).
//! - [`fixtures`]: conversations and job backlogs written directly; [`ledger`]: what the database
//!   says happened to the jobs; [`mock`]: what the provider saw.
//! - [`cpu`]: who used the CPU meanwhile; [`machine`]: what the machine is.
//! - [`report`]: the result, as text for people and as JSON (`--json`).
//!
//! Each scenario runs on a stack of its own, so one scenario's queue never feeds another's
//! workers.

mod cpu;
mod e2e;
mod enqueue;
mod fixtures;
mod fleet;
mod lanes;
mod ledger;
mod limits;
mod load;
mod machine;
mod mock;
mod openloop;
mod overhead;
mod phase;
mod progress;
mod report;
mod scratch;
mod spike;
mod sse;
mod sse_frames;
mod stack;
mod subscribers;
mod ttft;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use self::report::Report;
use self::stack::{Stack, StackPlan, StackStop};

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
}

/// Benchmark chatq on this machine, beside the machine's own limits measured in the same run.
///
/// The defaults finish each scenario in a minute or two.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "chatq-bench", version, about, long_about)]
pub struct BenchArgs {
    /// What to measure. Every scenario but `limits` measures the limits first (see --no-limits).
    #[arg(value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Skip the limits (the report then has no ratios).
    #[arg(long)]
    pub no_limits: bool,
    /// enqueue: requests measured, each to its own conversation.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// e2e: jobs measured, each in its own conversation.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Requests (enqueue) or jobs (e2e) sent before measuring, to open connections and warm caches.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: usize,
    /// Connections of the load generator, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// e2e: worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// e2e: jobs each worker runs at once (CHATQ_WORKER_CONCURRENCY).
    #[arg(long, default_value_t = 256)]
    pub worker_concurrency: usize,
    /// Seconds each limits probe runs.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// e2e: the mock provider's time to first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub mock_ttft_ms: u64,
    /// e2e: milliseconds between the mock's tokens.
    #[arg(long, default_value_t = 0)]
    pub mock_token_delay_ms: u64,
    /// e2e: tokens in each of the mock's replies.
    #[arg(long, default_value_t = 16)]
    pub mock_tokens: u32,
    /// e2e: seconds to wait for the jobs to finish before reporting what did.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Postgres, as a URL whose user may create databases; the scratch database is made there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
    /// NATS with JetStream; the scratch namespace is made there.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// An extra setting for every chatq process, as CHATQ_NAME=VALUE (repeatable), e.g.
    /// --env CHATQ_DATABASE_MAX_CONNECTIONS=64.
    #[arg(long = "env", value_name = "CHATQ_NAME=VALUE")]
    pub env: Vec<String>,
    /// The chatq executable to benchmark [default: the `chatq` next to this executable].
    #[arg(long, value_name = "PATH")]
    pub chatq: Option<PathBuf>,
    /// Keep the chatq processes' logs (they are kept anyway when something failed).
    #[arg(long)]
    pub keep_logs: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
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
}

impl BenchArgs {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.1))
    }
}

/// The shared servers the bench uses, and the settings every chatq process gets on top of the
/// bench's own.
#[derive(Debug, Clone)]
pub struct Services {
    /// The chatq executable every process of the system under test is started from.
    pub chatq: PathBuf,
    pub postgres_url: String,
    pub nats_url: String,
    pub extra_env: Vec<(String, String)>,
    pub keep_logs: bool,
}

impl Services {
    fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        let extra_env = args
            .env
            .iter()
            .map(|pair| {
                let (name, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--env {pair:?}: expected CHATQ_NAME=VALUE"))?;
                anyhow::ensure!(
                    name.starts_with("CHATQ_"),
                    "--env {pair:?}: only CHATQ_* settings can be passed to chatq"
                );
                Ok((name.to_owned(), value.to_owned()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            chatq: chatq_executable(args.chatq.as_deref())?,
            postgres_url: args.postgres_url.clone(),
            nats_url: args.nats_url.clone(),
            extra_env,
            keep_logs: args.keep_logs,
        })
    }
}

/// The chatq executable to benchmark: `--chatq`, or the `chatq` beside this executable (where
/// `cargo build --workspace` puts both).
fn chatq_executable(named: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    let path = match named {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("cannot find this executable, to find chatq beside it; use --chatq PATH")?
            .with_file_name(format!("chatq{}", std::env::consts::EXE_SUFFIX)),
    };
    anyhow::ensure!(
        path.is_file(),
        "no chatq executable at {}: build it beside chatq-bench (`cargo build --release \
         --workspace`, or `--bin chatq`), or name one with --chatq PATH",
        path.display()
    );
    Ok(path)
}

/// Runs the chosen scenarios, prints the report, and writes it as JSON if asked.
///
/// # Errors
/// A service is unreachable, a stack fails to start, or a measurement cannot run.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // sqlx warns about slow statements, and dropping a database is one: not news here.
    chatq_common::telemetry::init(chatq_common::settings::LogFormat::Pretty, "warn,sqlx=error");
    let services = Services::from_args(&args)?;
    let mut report = Report {
        date: now_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: describe_machine(&services).await?,
        limits: None,
        enqueue: None,
        e2e: None,
        ttft: None,
        overhead: None,
        sse: None,
        fleet: None,
        spike: None,
        lanes: None,
    };
    let wants = |scenario| args.scenario == Scenario::All || args.scenario == scenario;
    if args.scenario == Scenario::Limits || !args.no_limits {
        let plan = StackPlan {
            workers: 0,
            worker_concurrency: args.worker_concurrency,
            mock: None,
            env: Vec::new(),
        };
        let limits = with_stack(&services, &plan, async |stack: &mut Stack| {
            limits::measure(&args, stack).await
        })
        .await?;
        report.limits = Some(limits);
    }
    if wants(Scenario::Enqueue) {
        report.enqueue = Some(enqueue::run(&args, &services).await?);
    }
    if wants(Scenario::E2e) {
        report.e2e = Some(e2e::run(&args, &services).await?);
    }
    if wants(Scenario::Ttft) {
        report.ttft = Some(ttft::run(&args, &services).await?);
    }
    if wants(Scenario::Overhead) {
        report.overhead = Some(overhead::run(&args, &services).await?);
    }
    if wants(Scenario::Sse) {
        report.sse = Some(sse::run(&args, &services).await?);
    }
    if wants(Scenario::Fleet) {
        report.fleet = Some(fleet::run(&args, &services).await?);
    }
    if wants(Scenario::Spike) {
        report.spike = Some(spike::run(&args, &services).await?);
    }
    if wants(Scenario::Lanes) {
        report.lanes = Some(lanes::run(&args, &services).await?);
    }
    let text = report.render();
    #[expect(clippy::print_stdout, reason = "the report is the command's output")]
    {
        print!("{text}");
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Starts a stack, runs `scenario` on it, and always stops the stack and removes its scratch
/// resources afterwards, also when the scenario fails or is interrupted with Ctrl-C.
async fn with_stack<T>(
    services: &Services,
    plan: &StackPlan,
    scenario: impl AsyncFnOnce(&mut Stack) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut stack = Stack::start(services, plan).await?;
    let outcome = tokio::select! {
        outcome = scenario(&mut stack) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let stopped = stack.stop(services.keep_logs || outcome.is_err()).await;
    let outcome = match (outcome, &stopped) {
        (
            Err(err),
            Ok(StackStop {
                logs: Some(logs), ..
            }),
        ) => Err(err.context(format!("chatq logs kept in {}", logs.display()))),
        (outcome, _) => outcome,
    };
    let outcome = outcome?;
    let stopped = stopped?;
    if let Some(logs) = &stopped.logs
        && stopped.problems.is_empty()
    {
        #[expect(clippy::print_stderr, reason = "where to find what --keep-logs kept")]
        {
            eprintln!("chatq logs kept in {}", logs.display());
        }
    }
    anyhow::ensure!(
        stopped.problems.is_empty(),
        "the measurement finished, but not every chatq process ran cleanly: {}{}",
        stopped.problems.join("; "),
        stopped
            .logs
            .map(|logs| format!(" (logs in {})", logs.display()))
            .unwrap_or_default()
    );
    Ok(outcome)
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
    let nats = chatq_common::nats::connect(&services.nats_url, "bench").await?;
    let nats_version = nats.server_info().version;
    Ok(machine::describe(postgres_version, nats_version))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
