//! `history`: one conversation grown turn by turn to thousands of messages, and what a turn
//! costs as it grows. A turn's prompt is the conversation's newest messages (the window,
//! `CHATQ_HISTORY_MAX_MESSAGES`); the worker keeps the window between turns, so a turn's claim
//! reads only the messages written since (the last reply and the new question). What must hold
//! is that neither the rows read nor the time taken grow with the conversation.
//!
//! Each turn is `POST /v1/conversations/{id}/messages` with `Prefer: wait=60`, sent after the
//! previous one has ended and timed from sending to the finished job read. The messages each
//! turn's claim read from Postgres, and those the worker kept from the turn before, are the
//! worker's own counter (`chatq_history_messages_total` on its `/metrics`), read before and after
//! each sample of turns: one sample at the start of the conversation, one at its end. Turns are
//! not sampled, so their replies are not cached (temperature unset).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use serde::Serialize;

use super::args::GeneralArgs;
use super::figures::{Percentiles, thousands};
use super::fixtures;
use super::load::Connection;
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};

#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// history: turns sent to the one conversation (each adds two messages).
    #[arg(id = "history-turns", long = "history-turns", default_value_t = 2500)]
    pub turns: usize,
    /// history: turns measured at the start of the conversation and again at its end.
    #[arg(id = "history-sample", long = "history-sample", default_value_t = 100)]
    pub sample: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryResult {
    pub turns: usize,
    /// Messages in the conversation at the end.
    pub messages: usize,
    pub samples: Vec<HistorySample>,
    pub seconds: f64,
}

/// A run of consecutive turns, measured together.
#[derive(Debug, Clone, Serialize)]
pub struct HistorySample {
    /// Messages in the conversation before the sample's first turn, and before its last.
    pub messages_from: usize,
    pub messages_to: usize,
    pub turns: usize,
    pub turn_ms: Percentiles,
    /// Messages of the prompt windows read from Postgres by the claims, per turn.
    pub read_per_turn: f64,
    /// Messages of the prompt windows the worker had kept from the turn before, per turn.
    pub kept_per_turn: f64,
}

/// Runs the scenario on a stack of its own (mock, ingress, one worker with its metrics served).
///
/// # Errors
/// The stack does not start, a turn fails, or the worker's metrics cannot be read.
pub async fn run(
    general: &GeneralArgs,
    args: &HistoryArgs,
    services: &Services,
) -> anyhow::Result<HistoryResult> {
    let metrics_addr = free_local_addr()?;
    let mock_plan = MockPlan {
        ttft_ms: general.mock_ttft_ms,
        token_delay_ms: 0,
        tokens: 16,
    };
    let plan = StackPlan::new(1, general.worker_concurrency, Some(mock_plan))
        .without_key_rate_limit()
        .with_env("CHATQ_WORKER_METRICS_ADDR", metrics_addr);
    let sample = args.sample.clamp(1, args.turns.max(1));
    with_stack(services, &plan, async |stack: &mut Stack| {
        let conversation = fixtures::create_conversations(&stack.scratch.pool, stack.tenant, 1)
            .await?
            .pop()
            .context("no conversation was created")?;
        let path = format!(
            "/v1/conversations/{}/messages",
            chatq_common::ids::ConversationId::from_uuid(conversation)
        );
        let mut connection = Connection::open(stack.ingress).await?;
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut turn = 0;
        // The first sample, the turns in between (unmeasured), the last sample.
        let last_start = args.turns.saturating_sub(sample).max(sample);
        for (from, to, measured) in [
            (0, sample, true),
            (sample, last_start, false),
            (last_start, args.turns, true),
        ] {
            if from >= to {
                continue;
            }
            let before = history_counters(metrics_addr).await?;
            let mut ms = Vec::with_capacity(to - from);
            while turn < to {
                ms.push(send_turn(&mut connection, stack, &path, turn).await?);
                turn += 1;
            }
            let after = history_counters(metrics_addr).await?;
            if measured {
                let turns = (to - from) as f64;
                samples.push(HistorySample {
                    messages_from: from * 2,
                    messages_to: (to - 1) * 2,
                    turns: to - from,
                    turn_ms: Percentiles::of_millis(&ms)?,
                    read_per_turn: (after.read - before.read) / turns,
                    kept_per_turn: (after.kept - before.kept) / turns,
                });
            }
        }
        Ok(HistoryResult {
            turns: turn,
            messages: turn * 2,
            samples,
            seconds: started.elapsed().as_secs_f64(),
        })
    })
    .await
}

/// An address on this machine nobody listens on now, for the worker's metrics.
fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free port for the worker's metrics")?;
    Ok(listener.local_addr()?)
}

/// Sends turn number `turn` and waits for its reply; returns how long that took, in ms.
async fn send_turn(
    connection: &mut Connection,
    stack: &Stack,
    path: &str,
    turn: usize,
) -> anyhow::Result<f64> {
    let body = serde_json::json!({ "content": format!("Turn {turn}: and what comes next?") });
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, stack.ingress.to_string())
        .header(AUTHORIZATION, format!("Bearer {}", stack.api_key))
        .header(CONTENT_TYPE, "application/json")
        .header("prefer", "wait=60")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let sent = Instant::now();
    let response = connection.send(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let ms = sent.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(status.as_u16() == 200, "turn {turn} answered {status}");
    let answered: serde_json::Value = serde_json::from_slice(&body)?;
    anyhow::ensure!(
        answered["job"]["status"] == "succeeded",
        "turn {turn} ended {}",
        answered["job"]["status"]
    );
    Ok(ms)
}

/// The worker's `chatq_history_messages_total`, by source.
struct HistoryCounters {
    read: f64,
    kept: f64,
}

async fn history_counters(worker: SocketAddr) -> anyhow::Result<HistoryCounters> {
    let mut connection = Connection::open(worker).await?;
    let request = Request::builder()
        .method(Method::GET)
        .uri("/metrics")
        .header(HOST, worker.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = connection.send(request).await?;
    let text = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&text);
    let counter = |source: &str| {
        let series = format!("chatq_history_messages_total{{source=\"{source}\"}}");
        text.lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(HistoryCounters {
        read: counter("postgres"),
        kept: counter("memory"),
    })
}

impl HistoryResult {
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nhistory: one conversation grown to {} messages over {} turns, one at a time, {:.1} s",
            thousands(self.messages as f64),
            thousands(self.turns as f64),
            self.seconds
        );
        let _ = writeln!(
            out,
            "  messages before the turn   turns   turn p50 / p99 ms    per turn: read from Postgres / kept by the worker"
        );
        for sample in &self.samples {
            let _ = writeln!(
                out,
                "  {:>7}–{:<7}            {:>5}   {:>7.2} / {:<8.2}   {:.1} / {:.1}",
                thousands(sample.messages_from as f64),
                thousands(sample.messages_to as f64),
                sample.turns,
                sample.turn_ms.p50,
                sample.turn_ms.p99,
                sample.read_per_turn,
                sample.kept_per_turn
            );
        }
    }
}
