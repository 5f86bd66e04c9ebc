//! `cache`: a workload in which half the requests repeat an earlier deterministic prompt, and
//! what the reply cache makes of it: the provider calls saved (counted at the mock provider, not
//! by chatq), and the end-to-end latency of a hit beside that of a miss, in one run.
//!
//! `POST /v1/chat/completions` at temperature 0, non-streaming, from a fixed number of clients:
//! first every prompt once (misses), then each of them again in another order (hits). Each
//! request is timed from sending to the whole body read, and counted as a hit or a miss by its
//! `x-chatq-cache` header.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use serde::Serialize;

use super::args::GeneralArgs;
use super::figures::Percentiles;
use super::load::Connection;
use super::mock;
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};

#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// cache: requests in all; half of them repeat an earlier prompt.
    #[arg(id = "cache-requests", long = "cache-requests", default_value_t = 2000)]
    pub requests: usize,
    /// cache: clients sending at once.
    #[arg(id = "cache-clients", long = "cache-clients", default_value_t = 16)]
    pub clients: usize,
    /// cache: the mock provider's time to first token, in milliseconds.
    #[arg(id = "cache-mock-ms", long = "cache-mock-ms", default_value_t = 100)]
    pub mock_ttft_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheResult {
    pub requests: usize,
    pub repeated: usize,
    pub clients: usize,
    pub mock_ttft_ms: u64,
    /// Requests that reached the mock provider.
    pub provider_calls: u64,
    pub calls_saved: u64,
    pub hits: usize,
    pub misses: usize,
    pub hit_ms: Percentiles,
    pub miss_ms: Percentiles,
    pub seconds: f64,
}

/// One request's outcome: hit or miss, and its latency.
struct Timed {
    hit: bool,
    ms: f64,
}

/// Runs the scenario on a stack of its own (mock, ingress, one worker).
///
/// # Errors
/// The stack does not start, or a request fails.
pub async fn run(
    general: &GeneralArgs,
    args: &CacheArgs,
    services: &Services,
) -> anyhow::Result<CacheResult> {
    let mock_plan = MockPlan {
        ttft_ms: args.mock_ttft_ms,
        token_delay_ms: 0,
        tokens: 16,
    };
    let plan = StackPlan::new(general.workers, general.worker_concurrency, Some(mock_plan))
        .without_key_rate_limit();
    with_stack(services, &plan, async |stack: &mut Stack| {
        let mock_addr = stack.mock.context("the cache scenario needs the mock")?;
        let unique = (args.requests / 2).max(1);
        // A run-specific word, so a shared tier left by another run never answers.
        let run = uuid::Uuid::new_v4().simple().to_string();
        mock::reset(mock_addr).await?;
        let started = Instant::now();
        let first: Vec<usize> = (0..unique).collect();
        let mut timed = send_all(stack, &run, &first, args.clients).await?;
        // The same prompts again, in another order (a fixed stride through them).
        let stride = (unique / 2) | 1;
        let again: Vec<usize> = (0..unique).map(|i| (i * stride + 7) % unique).collect();
        timed.extend(send_all(stack, &run, &again, args.clients).await?);
        let seconds = started.elapsed().as_secs_f64();
        let provider_calls = mock::stats(mock_addr).await?.requests;
        let of = |hit: bool| -> Vec<f64> {
            timed
                .iter()
                .filter(|t| t.hit == hit)
                .map(|t| t.ms)
                .collect()
        };
        let (hits, misses) = (of(true), of(false));
        Ok(CacheResult {
            requests: timed.len(),
            repeated: again.len(),
            clients: args.clients,
            mock_ttft_ms: args.mock_ttft_ms,
            provider_calls,
            calls_saved: (timed.len() as u64).saturating_sub(provider_calls),
            hits: hits.len(),
            misses: misses.len(),
            hit_ms: Percentiles::of_millis(&hits)?,
            miss_ms: Percentiles::of_millis(&misses)?,
            seconds,
        })
    })
    .await
}

/// Sends the prompts numbered `prompts` from `clients` clients at once.
async fn send_all(
    stack: &Stack,
    run: &str,
    prompts: &[usize],
    clients: usize,
) -> anyhow::Result<Vec<Timed>> {
    let next = AtomicUsize::new(0);
    let client = async || -> anyhow::Result<Vec<Timed>> {
        let mut connection = Connection::open(stack.ingress).await?;
        let mut timed = Vec::new();
        while let Some(prompt) = prompts.get(next.fetch_add(1, Ordering::Relaxed)) {
            timed.push(ask(&mut connection, stack, run, *prompt).await?);
        }
        Ok(timed)
    };
    let all = futures::future::try_join_all((0..clients.max(1)).map(|_| client())).await?;
    Ok(all.into_iter().flatten().collect())
}

async fn ask(
    connection: &mut Connection,
    stack: &Stack,
    run: &str,
    prompt: usize,
) -> anyhow::Result<Timed> {
    let body = serde_json::json!({
        "model": super::stack::MODEL,
        "temperature": 0,
        "messages": [{"role": "user", "content": format!("Question {prompt} of run {run}: what is a queue?")}],
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(HOST, host(stack.ingress))
        .header(AUTHORIZATION, format!("Bearer {}", stack.api_key))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let sent = Instant::now();
    let response = connection.send(request).await?;
    let status = response.status();
    let hit = response
        .headers()
        .get("x-chatq-cache")
        .is_some_and(|v| v.as_bytes() == b"hit");
    response.into_body().collect().await?;
    let ms = sent.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(status.is_success(), "a completion answered {status}");
    Ok(Timed { hit, ms })
}

fn host(addr: SocketAddr) -> String {
    addr.to_string()
}

impl CacheResult {
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\ncache: {} deterministic completions ({} repeating an earlier prompt), {} clients, \
             mock TTFT {} ms, {:.1} s",
            self.requests, self.repeated, self.clients, self.mock_ttft_ms, self.seconds
        );
        let _ = writeln!(
            out,
            "  provider calls   {} of {} requests: {} saved ({:.0} %)",
            self.provider_calls,
            self.requests,
            self.calls_saved,
            self.calls_saved as f64 * 100.0 / self.requests.max(1) as f64
        );
        let _ = writeln!(
            out,
            "  hit   ({:>5})    p50 {:.2}  p99 {:.2}  max {:.2} ms",
            self.hits, self.hit_ms.p50, self.hit_ms.p99, self.hit_ms.max
        );
        let _ = writeln!(
            out,
            "  miss  ({:>5})    p50 {:.2}  p99 {:.2}  max {:.2} ms",
            self.misses, self.miss_ms.p50, self.miss_ms.p99, self.miss_ms.max
        );
    }
}
