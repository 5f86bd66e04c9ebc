//! # chatq-mock-llm
//!
//! An OpenAI-compatible mock LLM server for demos, tests and benchmarks: `chatq mock-llm` runs
//! it, the integration tests start one per test on a free port, and `chatq-bench` starts it as
//! the provider of the system under test. It is a test tool: it depends on chatq-common and
//! chatq-workers (whose simulated provider's text it answers with), never the other way round.
//!
//! It answers `POST /v1/chat/completions` (JSON, or SSE with `stream: true`) with deterministic
//! replies ([`answer`]: text, tool calls, JSON for a schema, several choices, logprobs), and
//! `GET /v1/models`, and `POST /v1/embeddings` with deterministic bag-of-words embeddings
//! ([`embedding`]), so texts sharing most words are close. Its behaviour is set at start-up and can be changed
//! while it runs with `POST /control` (a JSON [`MockConfig`]), so one test can turn on a 429 storm
//! or a stalled stream halfway through. It counts what it sees: `GET /stats` ([`MockStats`]) and
//! `GET /requests` (the most recent request bodies).
//!
//! # Layout
//!
//! - this file: [`MockConfig`] (its flags double as `chatq mock-llm`'s), the [`Fault`]s it can
//!   play, what it counts ([`MockStats`], [`RecordedRequest`]), and [`MockLlm`], a running server.
//! - [`answer`]: what the mock answers a request with, decided from the request alone.
//! - [`embedding`]: the embeddings it answers with, borrowed from the simulated provider.
//! - `encode`: a planned answer as streamed chunks or whole choices.
//! - [`reply`]: the reply text and token counts, borrowed from the simulated provider.
//! - `server`: the HTTP handlers: completions (JSON and SSE), faults, limits, stats, control.

pub mod answer;
pub mod embedding;
mod encode;
pub mod reply;
mod server;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::serve::{Listener, ListenerExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the mock behaves. Every field has a default, so `POST /control` may send only some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    /// Milliseconds before the first token (or before the whole reply, without streaming).
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Milliseconds between tokens.
    #[arg(long, default_value_t = 0)]
    pub token_delay_ms: u64,
    /// Tokens in each reply (fewer if the request's max_tokens says so).
    #[arg(long, default_value_t = 16)]
    pub tokens: u32,
    /// Fraction of requests (0 to 1) answered with HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Fraction of requests (0 to 1) answered with HTTP 429.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// Answer 429 to requests beyond this many in any one second (a provider's hidden limit).
    #[arg(long)]
    pub max_requests_per_sec: Option<u32>,
    /// Answer 429 to requests beyond this many in flight at once.
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// `Retry-After` seconds sent with 429 and 500 answers.
    #[arg(long)]
    pub retry_after_secs: Option<u64>,
    /// Answer with this text instead of the simulated reply, one token per word (each with the
    /// space before it): to see what a client does with, say, markup in a reply.
    #[arg(long)]
    pub reply: Option<String>,
    /// A misbehaviour to apply to every request that is not failed by the rates above.
    #[arg(skip)]
    pub fault: Option<Fault>,
    /// Answer every `/v1/embeddings` request with this HTTP status and an OpenAI-shaped error
    /// (the rates and faults above apply to chat completions only).
    #[arg(long)]
    pub embeddings_status: Option<u16>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            ttft_ms: 0,
            token_delay_ms: 0,
            tokens: 16,
            failure_rate: 0.0,
            rate_limit_rate: 0.0,
            max_requests_per_sec: None,
            max_concurrency: None,
            retry_after_secs: None,
            reply: None,
            fault: None,
            embeddings_status: None,
        }
    }
}

/// Ways an untrusted provider misbehaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Accept the connection and never answer.
    Hang,
    /// Stream `after_tokens` tokens, then go silent with the connection open.
    StallAfter { after_tokens: u32 },
    /// Stream `after_tokens` tokens, then close the connection without finishing.
    TruncateAfter { after_tokens: u32 },
    /// Stream `after_tokens` tokens, then a chunk that is not JSON.
    MalformedAfter { after_tokens: u32 },
    /// Answer 200 with a body that is not JSON at all.
    Garbage,
    /// Answer with a reply of this many bytes.
    Oversized { bytes: usize },
    /// Answer every request with this status and an OpenAI-shaped error.
    Status { status: u16 },
}

/// What the mock has seen since it started (or since `POST /reset`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MockStats {
    /// Chat completion requests received.
    pub requests: u64,
    /// Embedding requests received (`/v1/embeddings`), counted apart from chat completions.
    pub embeddings: u64,
    /// Requests answered successfully (whole reply sent).
    pub succeeded: u64,
    /// Requests answered with 429.
    pub rate_limited: u64,
    /// Requests answered with another error or fault.
    pub failed: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
    /// Milliseconds since start of each request's arrival (the most recent 1,000,000).
    pub arrivals_ms: Vec<u64>,
    /// For each request answered, when it arrived (ms since start) and the tokens its usage
    /// counts (prompt and completion): what a tokens-per-minute limit is measured in. The most
    /// recent 1,000,000.
    pub tokens_ms: Vec<(u64, u32)>,
}

/// One recorded request: what a test checks the provider was asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// The body exactly as received.
    pub body: serde_json::Value,
    pub model: Option<String>,
    pub messages: Vec<RecordedMessage>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedMessage {
    pub role: String,
    pub content: String,
}

/// Most request bodies kept for `GET /requests`.
const MAX_RECORDED: usize = 10_000;
const MAX_ARRIVALS: usize = 1_000_000;

/// State shared by the handlers.
#[derive(Debug)]
struct MockState {
    config: Mutex<MockConfig>,
    stats: Mutex<MockStats>,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    /// Arrivals within the last second, for `max_requests_per_sec`.
    recent: Mutex<VecDeque<Instant>>,
    started: Instant,
    /// Cancelled when the server stops, so hung and stalled answers end too.
    stop: CancellationToken,
}

impl MockState {
    fn config(&self) -> MockConfig {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn with_stats(&self, f: impl FnOnce(&mut MockStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            f(&mut stats);
        }
    }
}

/// A running mock server. Dropping it stops the server.
#[derive(Debug)]
pub struct MockLlm {
    addr: SocketAddr,
    state: Arc<MockState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl MockLlm {
    /// Binds `addr` (port 0 picks a free port) and serves until [`MockLlm::stop`] or drop.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start(addr: SocketAddr, config: MockConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let listener = without_write_delay(listener);
        let stop = CancellationToken::new();
        let state = Arc::new(MockState {
            stop: stop.clone(),
            config: Mutex::new(config),
            stats: Mutex::new(MockStats::default()),
            recorded: Mutex::new(VecDeque::new()),
            recent: Mutex::new(VecDeque::new()),
            started: Instant::now(),
        });
        let app = server::router(state.clone());
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app.into_make_service())
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "mock LLM server failed");
            }
        });
        Ok(Self {
            addr,
            state,
            stop,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give chatq: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_config(&self, config: MockConfig) {
        if let Ok(mut current) = self.state.config.lock() {
            *current = config;
        }
    }

    pub fn config(&self) -> MockConfig {
        self.state.config()
    }

    pub fn stats(&self) -> MockStats {
        self.state
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .recorded
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops accepting connections and waits for the server task to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            drop(task.await);
        }
    }

    /// Serves until `shutdown` is cancelled (the `chatq mock-llm` command).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
        self.stop().await;
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Accepts connections that send each write at once (`TCP_NODELAY`), as the front ends of real
/// providers do. Without it a streamed reply's first chunk, written just after the response head,
/// waits in the kernel until the client acknowledges the head (Nagle's algorithm), and the
/// client acknowledges late on purpose (delayed ACK): about 20 ms on loopback, which the bench
/// charged to chatq as time spent in the provider call.
fn without_write_delay(listener: TcpListener) -> impl Listener<Io = TcpStream, Addr = SocketAddr> {
    listener.tap_io(|stream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY on a mock LLM connection");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_send_each_write_at_once() {
        let mut listener = without_write_delay(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(
            accepted.nodelay().unwrap(),
            "the mock's side of a connection delays small writes"
        );
    }
}
