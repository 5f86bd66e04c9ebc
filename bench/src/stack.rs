//! The system under test, as real processes: the `chatq` executable (beside this one, or
//! `--chatq PATH`) started as `chatq mock-llm`, `chatq ingress` and N × `chatq worker`, each configured only through `CHATQ_*` variables,
//! exactly as an operator would run them. Nothing of chatq runs inside the bench process, so the
//! load generator and the server never share a runtime.
//!
//! Start-up: scratch database and namespace, mock, ingress (ready when `/readyz` says so), an API
//! key from `chatq keys create`, then the workers (ready when each has a pull request waiting).
//! Stop: SIGTERM to every child, a grace period, SIGKILL for any still running, then the scratch
//! resources are removed. Each child logs (at `warn`) to its own file, kept when something failed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chatq_common::db::Db;
use chatq_common::job::Lane;
use tokio::process::{Child, Command};
use uuid::Uuid;

use super::scratch::Scratch;
use super::services::Services;
use super::{load, progress};

/// How long a process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a process has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The tenant the bench's key and conversations belong to.
pub const TENANT: &str = "bench";
/// The model name the mock answers to.
pub const MODEL: &str = "mock-model";

/// What to start.
#[derive(Debug, Clone)]
pub struct StackPlan {
    pub workers: usize,
    pub worker_concurrency: usize,
    /// The mock provider, when workers are to call one.
    pub mock: Option<MockPlan>,
    /// Settings a scenario needs on top of the bench's own (no per-tenant quotas; a provider limit, a queue size, no
    /// per-key rate limit). `--env` is applied after them, so it can still override them.
    pub env: Vec<(String, String)>,
    /// Where the mock listens, when something outside the bench (a gateway measured beside
    /// chatq) must be pointed at it before the run; a free port otherwise.
    pub mock_addr: Option<SocketAddr>,
    /// The ingress and one worker in one `chatq serve` process (`workers` is then ignored).
    pub one_process: bool,
}

impl StackPlan {
    /// A plan with what is named, and no per-tenant quotas: every scenario's load
    /// comes from one tenant and measures the fleet, not the quotas.
    pub fn new(workers: usize, worker_concurrency: usize, mock: Option<MockPlan>) -> Self {
        let unlimited = [
            "CHATQ_TENANT_MAX_QUEUED_JOBS",
            "CHATQ_TENANT_MAX_JOBS_IN_FLIGHT",
            "CHATQ_TENANT_MAX_EVENT_STREAMS",
            "CHATQ_TENANT_MAX_CONVERSATIONS",
        ];
        Self {
            workers,
            worker_concurrency,
            mock,
            env: unlimited
                .into_iter()
                .map(|name| (name.to_owned(), "unlimited".to_owned()))
                .collect(),
            mock_addr: None,
            one_process: false,
        }
    }

    /// Runs the ingress and one worker as one `chatq serve` process, as a small deployment does.
    pub fn in_one_process(mut self) -> Self {
        self.one_process = true;
        self
    }

    /// Makes the mock listen on `addr` (see [`StackPlan::mock_addr`]).
    pub fn with_mock_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.mock_addr = addr;
        self
    }

    /// Adds a `CHATQ_*` setting for every process.
    pub fn with_env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.push((name.to_owned(), value.to_string()));
        self
    }

    /// Lifts the per-key request rate limit: the scenarios that send hundreds of requests a
    /// second all use the bench's one key, and would otherwise measure the limiter's 429s.
    pub fn without_key_rate_limit(self) -> Self {
        self.with_env("CHATQ_KEY_RATE_LIMIT_PER_SEC", "unlimited")
    }
}

/// `chatq mock-llm` flags.
#[derive(Debug, Clone)]
pub struct MockPlan {
    pub ttft_ms: u64,
    pub token_delay_ms: u64,
    pub tokens: u32,
}

/// One child process.
struct ChildProcess {
    role: &'static str,
    process: Child,
    log: PathBuf,
}

/// A running system under test.
pub struct Stack {
    pub scratch: Scratch,
    pub ingress: SocketAddr,
    /// The mock provider's address, when the plan has one.
    pub mock: Option<SocketAddr>,
    pub api_key: String,
    pub tenant: Uuid,
    /// The chatq executable every child is started from.
    chatq: PathBuf,
    children: Vec<ChildProcess>,
    log_dir: PathBuf,
    /// The `CHATQ_*` variables every chatq process gets.
    env: Vec<(String, String)>,
}

/// An API key and the tenant it belongs to.
#[derive(Debug, Clone)]
pub struct TenantKey {
    pub api_key: String,
    pub tenant: Uuid,
}

/// How the children ended, for the report.
#[derive(Debug, Clone)]
pub struct StackStop {
    /// Children that had exited on their own, or failed to exit cleanly.
    pub problems: Vec<String>,
    /// Where the child logs are, when they were kept.
    pub logs: Option<PathBuf>,
}

impl Stack {
    /// Starts everything in `plan` and waits until it is ready. On failure, whatever was
    /// started is stopped and removed again.
    ///
    /// # Errors
    /// A service cannot be reached, a child fails to start or to become ready.
    pub async fn start(services: &Services, plan: &StackPlan) -> anyhow::Result<Self> {
        let step = progress::step("starting chatq");
        step.set_message("scratch database and namespace");
        let scratch = Scratch::create(services).await?;
        let log_dir = std::env::temp_dir().join(&scratch.database);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let ingress = free_local_addr()?;
        let mut stack = Self {
            env: Vec::new(),
            scratch,
            ingress,
            mock: None,
            api_key: String::new(),
            tenant: Uuid::nil(),
            chatq: services.chatq.clone(),
            children: Vec::new(),
            log_dir,
        };
        let started = stack.start_processes(services, plan, &step).await;
        step.finish_and_clear();
        match started {
            Ok(()) => Ok(stack),
            Err(err) => {
                let logs = stack.log_dir.clone();
                drop(stack.stop(true).await);
                Err(err.context(format!("child logs are in {}", logs.display())))
            }
        }
    }

    async fn start_processes(
        &mut self,
        services: &Services,
        plan: &StackPlan,
        step: &indicatif::ProgressBar,
    ) -> anyhow::Result<()> {
        let mock_url = match &plan.mock {
            Some(mock) => {
                step.set_message("mock LLM");
                let addr = match plan.mock_addr {
                    Some(addr) => addr,
                    None => free_local_addr()?,
                };
                self.spawn(
                    "mock-llm",
                    &[
                        "mock-llm".into(),
                        format!("--addr={addr}"),
                        format!("--ttft-ms={}", mock.ttft_ms),
                        format!("--token-delay-ms={}", mock.token_delay_ms),
                        format!("--tokens={}", mock.tokens),
                        "--log=warn".into(),
                    ],
                )?;
                self.wait_until_ok(addr, "/v1/models").await?;
                self.mock = Some(addr);
                format!("http://{addr}/v1")
            }
            // The ingress never calls the provider; any URL will do.
            None => "http://127.0.0.1:9/v1".into(),
        };
        let in_flight = (plan.workers * plan.worker_concurrency).max(10_000);
        self.env = vec![
            (
                "CHATQ_DATABASE_URL".into(),
                self.scratch.database_url.clone(),
            ),
            ("CHATQ_NATS_URL".into(), services.nats_url.clone()),
            ("CHATQ_NAMESPACE".into(), self.scratch.namespace.to_string()),
            ("CHATQ_PROVIDER".into(), "openai".into()),
            ("CHATQ_PROVIDER_BASE_URL".into(), mock_url),
            ("CHATQ_MODEL".into(), MODEL.into()),
            (
                "CHATQ_WORKER_CONCURRENCY".into(),
                plan.worker_concurrency.to_string(),
            ),
            ("CHATQ_QUEUE_MAX_IN_FLIGHT".into(), in_flight.to_string()),
            ("CHATQ_SHUTDOWN_GRACE_SECS".into(), "5".into()),
            ("CHATQ_LOG".into(), "warn".into()),
        ];
        self.env.extend(plan.env.iter().cloned());
        self.env.extend(services.extra_env.iter().cloned());

        let front = if plan.one_process { "serve" } else { "ingress" };
        step.set_message(front);
        self.spawn(front, &[front.into()])?;
        self.wait_until_ok(self.ingress, "/readyz").await?;

        step.set_message("API key");
        let key = self.create_key(TENANT).await?;
        (self.api_key, self.tenant) = (key.api_key, key.tenant);

        if plan.one_process {
            self.wait_for_workers(1).await?;
        } else if plan.workers > 0 {
            step.set_message(format!("{} workers", plan.workers));
            for _ in 0..plan.workers {
                self.spawn("worker", &["worker".into()])?;
            }
            self.wait_for_workers(plan.workers).await?;
        }
        Ok(())
    }

    /// Pid of every chatq process, labelled by role, for CPU accounting.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .filter_map(|child| Some((child.role.to_owned(), child.process.id()?)))
            .collect()
    }

    /// The pid of the first process of a role (for `/proc/<pid>/status`).
    pub fn pid(&self, role: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|child| child.role == role)
            .and_then(|child| child.process.id())
    }

    /// Starts `count` more workers without waiting for them to pull: with a backlog queued, a
    /// worker takes jobs at once, so there is no idle pull to wait for. A worker that fails to
    /// start shows in [`Stack::check_alive`].
    ///
    /// # Errors
    /// A process cannot be started.
    pub fn add_workers(&mut self, count: usize) -> anyhow::Result<()> {
        for _ in 0..count {
            self.spawn("worker", &["worker".into()])?;
        }
        Ok(())
    }

    /// How many processes of a role are running.
    pub fn count(&self, role: &str) -> usize {
        self.children.iter().filter(|c| c.role == role).count()
    }

    fn command(&self, args: &[String]) -> Command {
        let mut command = Command::new(&self.chatq);
        command.args(args).kill_on_drop(true);
        // Only the settings chosen here: none inherited from the shell running the bench.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CHATQ_") {
                command.env_remove(name);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    fn spawn(&mut self, role: &'static str, args: &[String]) -> anyhow::Result<()> {
        let index = self.count(role);
        let log = self.log_dir.join(format!("{role}-{index}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = self.command(args);
        if role == "ingress" || role == "serve" {
            command.env("CHATQ_HTTP_ADDR", self.ingress.to_string());
        }
        let process = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start chatq {role}"))?;
        self.children.push(ChildProcess { role, process, log });
        Ok(())
    }

    /// A new API key of the tenant `name` (made if new), from `chatq keys create --tenant NAME`,
    /// whose standard output is the key alone. The stack's own key is one of [`TENANT`]; a
    /// scenario that needs a second tenant makes one here.
    ///
    /// # Errors
    /// The command fails or prints no key.
    pub async fn create_key(&self, name: &str) -> anyhow::Result<TenantKey> {
        let output = self
            .command(&["keys".into(), "create".into(), format!("--tenant={name}")])
            .stdin(Stdio::null())
            .output()
            .await
            .context("cannot run chatq keys create")?;
        anyhow::ensure!(
            output.status.success(),
            "chatq keys create failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let api_key = String::from_utf8(output.stdout)?.trim().to_owned();
        anyhow::ensure!(!api_key.is_empty(), "chatq keys create printed no key");
        let tenant = tenant_id(&self.scratch.pool, name).await?;
        Ok(TenantKey { api_key, tenant })
    }

    /// Polls `GET path` until it answers 200, failing early if a child has exited.
    async fn wait_until_ok(
        &mut self,
        target: SocketAddr,
        path: &'static str,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let answer = tokio::time::timeout(CHECK_TIMEOUT, load::get_status(target, path)).await;
            if let Ok(Ok(200)) = answer {
                return Ok(());
            }
            self.check_alive()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "http://{target}{path} not ready after {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `workers` pull requests wait on the interactive lane: every worker is pulling.
    async fn wait_for_workers(&mut self, workers: usize) -> anyhow::Result<()> {
        let topology = self.scratch.topology.clone();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let waiting = async {
                let stream = self
                    .scratch
                    .jetstream
                    .get_stream(topology.jobs_stream())
                    .await?;
                let info = stream
                    .consumer_info(topology.consumer_name(Lane::Interactive))
                    .await?;
                Ok::<usize, async_nats::Error>(info.num_waiting)
            }
            .await
            .unwrap_or(0);
            if waiting >= workers {
                return Ok(());
            }
            self.check_alive()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {waiting} of {workers} workers pulling after {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails if any child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Some(status) = child.process.try_wait()? {
                anyhow::bail!(
                    "chatq {} exited ({status}); its log is {}:\n{}",
                    child.role,
                    child.log.display(),
                    log_tail(&child.log)
                );
            }
        }
        Ok(())
    }

    /// Stops every child (SIGTERM, then SIGKILL after a grace period) and removes the scratch
    /// resources. Logs are kept when `keep_logs` is set or something went wrong.
    ///
    /// # Errors
    /// The scratch resources could not be removed.
    pub async fn stop(mut self, keep_logs: bool) -> anyhow::Result<StackStop> {
        let mut problems = Vec::new();
        // Workers first (they drain), then the ingress, then the mock the workers call.
        self.children.sort_by_key(|child| match child.role {
            "worker" => 0,
            "ingress" => 1,
            _ => 2,
        });
        let mut running = Vec::new();
        for child in &mut self.children {
            if let Ok(Some(status)) = child.process.try_wait() {
                problems.push(format!(
                    "chatq {} had exited by itself ({status})",
                    child.role
                ));
                continue;
            }
            terminate(&child.process);
            running.push(child);
        }
        for child in running {
            match stop_child(&mut child.process).await {
                Ok(status) if status.success() => {}
                Ok(status) => problems.push(format!("chatq {} ended with {status}", child.role)),
                Err(err) => problems.push(format!("chatq {}: {err:#}", child.role)),
            }
        }
        let removed = self.scratch.remove().await;
        let keep = keep_logs || !problems.is_empty() || removed.is_err();
        let logs = if keep {
            Some(self.log_dir.clone())
        } else {
            std::fs::remove_dir_all(&self.log_dir).ok();
            None
        };
        removed?;
        Ok(StackStop { problems, logs })
    }
}

/// Starts a stack, runs `scenario` on it, and always stops the stack and removes its scratch
/// resources afterwards, also when the scenario fails or is interrupted with Ctrl-C.
///
/// # Errors
/// The stack does not start, the scenario fails, or a chatq process did not run cleanly.
pub async fn with_stack<T>(
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

/// The id of the tenant named `name`.
///
/// # Errors
/// No such tenant, or a database error.
async fn tenant_id(pool: &Db, name: &str) -> anyhow::Result<Uuid> {
    sqlx::query_scalar!("SELECT id FROM tenants WHERE name = $1", name)
        .fetch_optional(pool)
        .await?
        .with_context(|| format!("no tenant named {name:?}"))
}

/// Asks a child to stop, as an operator's SIGTERM would.
fn terminate(child: &Child) {
    #[cfg(unix)]
    if let Some(pid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw)
        && let Err(err) = rustix::process::kill_process(pid, rustix::process::Signal::TERM)
    {
        tracing::warn!(%pid, error = %err, "cannot send SIGTERM to a chatq process");
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// Waits for a child that was sent SIGTERM; kills it if it takes longer than [`STOP_TIMEOUT`].
async fn stop_child(child: &mut Child) -> anyhow::Result<ExitStatus> {
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            child.kill().await?;
            anyhow::bail!("did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed")
        }
    }
}

/// A free port on 127.0.0.1 (free when asked; the child binds it a moment later).
fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?)
}

/// The last lines of a log, to show with an error.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
