//! The options every scenario shares (load, workers, the mock provider) and those of the run as a
//! whole (where Postgres and NATS are, which chatq, where the report goes). Each scenario's own
//! options live beside it, in its module.

use std::path::PathBuf;
use std::time::Duration;

/// Options of the run and of every scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct GeneralArgs {
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
}

impl GeneralArgs {
    /// How long each limits probe runs.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.1))
    }
}
