//! `sse`: how many concurrent event streams (`GET /v1/jobs/{id}/events`) one ingress process
//! holds, and its memory meanwhile.
//!
//! For each spread (jobs × subscribers per job), on a stack of its own: the jobs are queued with
//! no worker running, every subscriber connects and receives its first event, all are held open
//! and idle for a while, then the workers start and the jobs stream slowly (the mock's token
//! delay) to every subscriber. The ingress's resident memory (`VmRSS` in `/proc/<pid>/status`)
//! is read before the subscribers connect, once they all are, every 200 ms while the jobs stream,
//! and after the last stream closed. Every subscriber must receive the job's whole reply (its
//! deltas, joined, equal the reply stored in Postgres) and the terminal event.
//!
//! Each subscriber is one socket in the bench and one in the ingress, so both need a
//! file-descriptor limit above the number of subscribers: the bench raises its soft
//! `RLIMIT_NOFILE` to the hard limit, and the chatq processes it starts inherit it.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chatq_common::ids::JobId;
use chatq_common::job::Lane;
use serde::Serialize;

use super::args::GeneralArgs;
use super::cpu::{CpuUsage, CpuWatch};
use super::figures::{cpu_line, thousands};
use super::machine::{LoadAverage, status_kib};
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::subscribers::{Received, Subscribers};
use super::{fixtures, ledger, progress};

/// The design's targets: this many subscribers, in at most this much ingress memory.
pub const TARGET_SUBSCRIBERS: usize = 10_000;
pub const TARGET_RSS_MB: f64 = 250.0;
/// File descriptors the bench and the ingress need besides the subscribers' sockets.
const SPARE_FDS: u64 = 1_024;
/// How long the subscribers may take to connect, and the jobs to finish.
const OPEN_TIMEOUT: Duration = Duration::from_secs(180);
const STREAM_TIMEOUT: Duration = Duration::from_secs(600);

/// Jobs, and subscribers to each.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub jobs: usize,
    pub per_job: usize,
}

impl FromStr for Spread {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (jobs, per_job) = text
            .split_once('x')
            .ok_or_else(|| format!("{text:?}: expected JOBSxSUBSCRIBERS, e.g. 1000x10"))?;
        let number = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|err| format!("{text:?}: {err}"))
        };
        Ok(Self {
            jobs: number(jobs)?,
            per_job: number(per_job)?,
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct SseArgs {
    /// sse: spreads to measure, each on a stack of its own, as JOBSxSUBSCRIBERS_PER_JOB.
    #[arg(
        long = "sse-spreads",
        value_delimiter = ',',
        default_value = "1000x10,10000x1"
    )]
    pub spreads: Vec<Spread>,
    /// sse: tokens in each streamed reply.
    #[arg(id = "sse-tokens", long = "sse-tokens", default_value_t = 10)]
    pub tokens: u32,
    /// sse: milliseconds between the mock's tokens (how slowly each job streams).
    #[arg(
        id = "sse-token-delay-ms",
        long = "sse-token-delay-ms",
        default_value_t = 400
    )]
    pub token_delay_ms: u64,
    /// sse: jobs each worker streams at once (CHATQ_WORKER_CONCURRENCY).
    #[arg(
        id = "sse-worker-concurrency",
        long = "sse-worker-concurrency",
        default_value_t = 2_000
    )]
    pub worker_concurrency: usize,
    /// sse: seconds every subscriber is held open and idle before the workers start.
    #[arg(id = "sse-hold-secs", long = "sse-hold-secs", default_value_t = 5)]
    pub hold_secs: u64,
}

/// The ingress's memory and descriptors at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct IngressMemory {
    pub rss_mb: f64,
    pub open_fds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpreadResult {
    pub spread: Spread,
    pub subscribers: usize,
    pub seconds_to_open: f64,
    /// Most subscribers with an open connection at one time, as the bench counted them.
    pub max_open: usize,
    pub before: IngressMemory,
    /// Every subscriber connected, jobs still queued.
    pub all_open: IngressMemory,
    /// Highest RSS sampled while the jobs streamed, with the descriptors then.
    pub peak: IngressMemory,
    /// The kernel's high-water mark of the ingress's RSS (`VmHWM`), at the end.
    pub high_water_mb: f64,
    /// A few seconds after the last stream closed.
    pub after: IngressMemory,
    /// The soft `RLIMIT_NOFILE` the ingress ran with.
    pub fd_limit: u64,
    pub seconds_streaming: f64,
    /// Subscribers that received the whole stored reply and `job.succeeded`, and the stream end.
    pub complete: usize,
    pub incomplete: usize,
    pub first_problem: Option<String>,
    pub events_received: usize,
    pub load_average: LoadAverage,
    /// While every subscriber was open and idle, before the workers started.
    pub cpu_idle_hold: CpuUsage,
    /// While the jobs streamed.
    pub cpu_streaming: CpuUsage,
}

#[derive(Debug, Clone, Serialize)]
pub struct SseResult {
    pub tokens: u32,
    pub token_delay_ms: u64,
    pub worker_concurrency: usize,
    pub spreads: Vec<SpreadResult>,
}

/// Runs every spread, each on a stack of its own (mock, ingress, then the workers).
///
/// # Errors
/// The file-descriptor limit is too low, a stack does not start, or a step times out.
pub async fn run(
    args: &GeneralArgs,
    sse: &SseArgs,
    services: &Services,
) -> anyhow::Result<SseResult> {
    let most = sse
        .spreads
        .iter()
        .map(|s| s.jobs * s.per_job)
        .max()
        .unwrap_or(0);
    let fd_limit = raise_fd_limit(most as u64 + SPARE_FDS)?;
    let mut spreads = Vec::new();
    for spread in &sse.spreads {
        spreads.push(run_spread(args, sse, services, *spread, fd_limit).await?);
    }
    Ok(SseResult {
        tokens: sse.tokens,
        token_delay_ms: sse.token_delay_ms,
        worker_concurrency: sse.worker_concurrency,
        spreads,
    })
}

async fn run_spread(
    args: &GeneralArgs,
    sse: &SseArgs,
    services: &Services,
    spread: Spread,
    fd_limit: u64,
) -> anyhow::Result<SpreadResult> {
    let subscribers = spread.jobs * spread.per_job;
    let mock = MockPlan {
        ttft_ms: 200,
        token_delay_ms: sse.token_delay_ms,
        tokens: sse.tokens,
    };
    let plan = StackPlan::new(0, sse.worker_concurrency, Some(mock))
        .without_key_rate_limit()
        .with_env("CHATQ_MAX_EVENT_STREAMS", (subscribers + 1_000).max(20_000));
    with_stack(services, &plan, async |stack: &mut Stack| {
        let ingress = stack
            .pid("ingress")
            .ok_or_else(|| anyhow::anyhow!("the ingress has no pid"))?;
        let jobs = fixtures::queue_completions(
            &stack.scratch,
            stack.tenant,
            Lane::Interactive,
            spread.jobs,
            3_600.0,
        )
        .await?;
        let before = memory(ingress);
        let load_average = LoadAverage::now();

        // Connect every subscriber; the jobs wait in the queue meanwhile.
        let followed: Vec<JobId> = jobs
            .iter()
            .flat_map(|job| std::iter::repeat_n(*job, spread.per_job))
            .collect();
        let opening = Instant::now();
        let running = Subscribers::start(stack.ingress, &stack.api_key, &followed)?;
        let counters = running.counters.clone();
        let spinner = progress::step(&format!("sse {}x{}", spread.jobs, spread.per_job));
        while counters.ready.load(Ordering::Relaxed) < subscribers {
            let failed = counters.finished.load(Ordering::Relaxed);
            anyhow::ensure!(failed == 0, "{failed} subscribers failed while connecting");
            anyhow::ensure!(
                opening.elapsed() < OPEN_TIMEOUT,
                "subscribers not all connected after {OPEN_TIMEOUT:?}"
            );
            spinner.set_message(format!(
                "connected {}",
                counters.ready.load(Ordering::Relaxed)
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seconds_to_open = opening.elapsed().as_secs_f64();
        let all_open = memory(ingress);
        let mut max_open = counters.open.load(Ordering::Relaxed);

        // Hold them open and idle, then let the jobs stream.
        spinner.set_message(format!("{subscribers} open and idle"));
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let idle_start = watch.sample();
        tokio::time::sleep(Duration::from_secs(sse.hold_secs)).await;
        let cpu_idle_hold = watch.usage_since(&idle_start);
        stack.add_workers(args.workers)?;
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let streaming = Instant::now();
        let stream_start = watch.sample();
        let mut peak = memory(ingress);
        loop {
            let finished = counters.finished.load(Ordering::Relaxed);
            if finished >= subscribers {
                break;
            }
            stack.check_alive()?;
            anyhow::ensure!(
                streaming.elapsed() < STREAM_TIMEOUT,
                "the streams did not all end within {STREAM_TIMEOUT:?}"
            );
            let now = memory(ingress);
            if now.rss_mb > peak.rss_mb {
                peak = now;
            }
            max_open = max_open.max(counters.open.load(Ordering::Relaxed));
            spinner.set_message(format!(
                "{finished} of {subscribers} streams ended; ingress RSS {:.0} MB",
                now.rss_mb
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seconds_streaming = streaming.elapsed().as_secs_f64();
        let cpu_streaming = watch.usage_since(&stream_start);
        let received = running.finish().await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = memory(ingress);
        spinner.finish_and_clear();

        let check = check_streams(stack, &received).await?;
        Ok(SpreadResult {
            spread,
            subscribers,
            seconds_to_open,
            max_open,
            before,
            all_open,
            peak,
            high_water_mb: status_kib(ingress, "VmHWM:") as f64 / 1024.0,
            after,
            fd_limit,
            seconds_streaming,
            complete: check.complete,
            incomplete: received.len() - check.complete,
            first_problem: check.first_problem,
            events_received: received.iter().map(|r| r.events).sum(),
            load_average,
            cpu_idle_hold,
            cpu_streaming,
        })
    })
    .await
}

struct StreamCheck {
    complete: usize,
    first_problem: Option<String>,
}

/// Compares what each subscriber received with the reply Postgres has for its job.
async fn check_streams(stack: &Stack, received: &[Received]) -> anyhow::Result<StreamCheck> {
    let ids: Vec<uuid::Uuid> = received.iter().map(|r| r.job.as_uuid()).collect();
    let stored: std::collections::HashMap<uuid::Uuid, ledger::JobRecord> =
        ledger::jobs_by_id(&stack.scratch.pool, &ids)
            .await?
            .into_iter()
            .map(|job| (job.id, job))
            .collect();
    let mut check = StreamCheck {
        complete: 0,
        first_problem: None,
    };
    for got in received {
        let job = stored.get(&got.job.as_uuid());
        let problem = if let Some(error) = &got.error {
            Some(error.clone())
        } else if got.terminal.as_deref() != Some("job.succeeded") || !got.ended {
            Some(format!(
                "ended with {:?} (stream closed: {})",
                got.terminal, got.ended
            ))
        } else if job.and_then(|job| job.reply_content.as_deref()) != Some(got.text.as_str()) {
            Some(format!(
                "received {:?}, stored {:?}",
                got.text,
                job.and_then(|job| job.reply_content.as_deref())
            ))
        } else {
            None
        };
        match problem {
            None => check.complete += 1,
            Some(problem) => {
                check.first_problem = check
                    .first_problem
                    .or_else(|| Some(format!("job {}: {problem}", got.job)));
            }
        }
    }
    Ok(check)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children inherit it) and checks
/// that it covers `needed`. Returns the new soft limit.
fn raise_fd_limit(needed: u64) -> anyhow::Result<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let hard = limit.maximum.unwrap_or(u64::MAX);
        let soft = limit.current.unwrap_or(u64::MAX);
        if soft < hard {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(hard),
                    maximum: limit.maximum,
                },
            )?;
        }
        let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        anyhow::ensure!(
            soft >= needed,
            "the sse scenario needs {needed} file descriptors in the bench and in the ingress, \
             but the limit is {soft} (hard {hard}); raise it first, e.g. `ulimit -n {needed}` \
             as root or in /etc/security/limits.conf"
        );
        Ok(soft)
    }
    #[cfg(not(unix))]
    Ok(needed)
}

/// The ingress's RSS and open descriptors now.
fn memory(pid: u32) -> IngressMemory {
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    IngressMemory {
        rss_mb: status_kib(pid, "VmRSS:") as f64 / 1024.0,
        open_fds,
    }
}

impl SseResult {
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nSSE: concurrent GET /v1/jobs/{{id}}/events streams on one ingress; each reply {} tokens {} ms apart; workers × concurrency {}",
            self.tokens, self.token_delay_ms, self.worker_concurrency
        );
        for spread in &self.spreads {
            spread.render(out);
        }
    }
}

impl SpreadResult {
    fn render(&self, out: &mut String) {
        let held = self.max_open >= TARGET_SUBSCRIBERS;
        let small = self.peak.rss_mb.max(self.high_water_mb) <= TARGET_RSS_MB;
        let verdict = if held && small { "met" } else { "MISSED" };
        let _ = writeln!(
            out,
            "  {} jobs × {} subscribers = {} streams: all connected in {:.1} s; most open at once {} (target {} in ≤ {TARGET_RSS_MB} MB: {verdict})",
            thousands(self.spread.jobs as f64),
            self.spread.per_job,
            thousands(self.subscribers as f64),
            self.seconds_to_open,
            thousands(self.max_open as f64),
            thousands(TARGET_SUBSCRIBERS as f64),
        );
        let _ = writeln!(
            out,
            "      ingress RSS MB: before {:.1}, all open and idle {:.1}, peak while streaming {:.1} (high-water mark {:.1}), after {:.1}; {:.1} KB per stream at peak",
            self.before.rss_mb,
            self.all_open.rss_mb,
            self.peak.rss_mb,
            self.high_water_mb,
            self.after.rss_mb,
            (self.peak.rss_mb - self.before.rss_mb) * 1024.0 / self.subscribers.max(1) as f64,
        );
        let _ = writeln!(
            out,
            "      ingress file descriptors: {} before, {} all open, {} at peak; limit {} (RLIMIT_NOFILE, inherited from the bench)",
            self.before.open_fds, self.all_open.open_fds, self.peak.open_fds, self.fd_limit
        );
        let _ = writeln!(
            out,
            "      complete streams (whole stored reply, job.succeeded, then closed): {} of {}{}; events received {}; streaming took {:.1} s",
            thousands(self.complete as f64),
            thousands(self.subscribers as f64),
            self.first_problem
                .as_ref()
                .map(|p| format!(" — first problem: {p}"))
                .unwrap_or_default(),
            thousands(self.events_received as f64),
            self.seconds_streaming,
        );
        let _ = writeln!(out, "      load average at start {}", self.load_average);
        let _ = writeln!(
            out,
            "      CPU, all open and idle: {}",
            cpu_line(&self.cpu_idle_hold)
        );
        let _ = writeln!(
            out,
            "      CPU, while streaming: {}",
            cpu_line(&self.cpu_streaming)
        );
    }
}
