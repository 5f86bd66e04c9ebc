//! `cache`: a workload in which half the requests repeat an earlier deterministic prompt, and
//! what the reply cache makes of it: the provider calls saved (counted at the mock provider, not
//! by chatq), and the end-to-end latency of a hit beside that of a miss, in one run.
//!
//! `POST /v1/chat/completions` at temperature 0, non-streaming, from a fixed number of clients:
//! first every prompt once (misses), then each of them again in another order (hits). Each
//! request is timed from sending to the whole body read, and counted as a hit or a miss by its
//! `x-chatq-cache` header, and by tier by its `x-chatq-cache-tier` header.
//!
//! With `--cache-semantic`, the semantic tier is on, and every prompt is asked a third time in
//! other words (one word more: a near-duplicate the exact tiers do not hold), so a semantic hit's
//! latency shows beside an exact hit's and a miss's. A miss then costs an embedding call and a
//! nearest-neighbour query first; the mock's embeddings are bags of words
//! (`chatq_workers::provider::simulated::embedding`): each prompt has six random words of its
//! own, so a prompt and its rewording are at least 0.95 alike, two prompts at most about 0.85,
//! and the threshold is set at 0.92 between them.

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
    /// cache: turn the semantic tier on and ask every prompt a third time in other words. Needs
    /// pgvector on the Postgres server of --postgres-url.
    #[arg(id = "cache-semantic", long = "cache-semantic")]
    pub semantic: bool,
}

/// The semantic tier's threshold in this scenario: below a prompt and its rewording (at least
/// 0.95 alike), above any two different prompts (at most about 0.85).
const SEMANTIC_THRESHOLD: &str = "0.92";

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
    /// With `--cache-semantic`: the hits the semantic tier served (counted among `hits`, but not
    /// in `hit_ms`, which is the exact tiers'), and the embedding calls the mock received.
    pub semantic: Option<SemanticFigures>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SemanticFigures {
    pub reworded: usize,
    pub hits: usize,
    pub hit_ms: Percentiles,
    pub embedding_calls: u64,
}

/// Where a reply came from, as the response's headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Miss,
    Exact,
    Semantic,
}

/// One request's outcome: where its reply came from, and its latency.
struct Timed {
    served: Served,
    ms: f64,
}

/// How a prompt is worded: as first asked, or in other words.
#[derive(Debug, Clone, Copy)]
enum Wording {
    First,
    Reworded,
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
    let mut plan = StackPlan::new(general.workers, general.worker_concurrency, Some(mock_plan))
        .without_key_rate_limit();
    if args.semantic {
        plan = plan
            .with_env("CHATQ_CACHE_SEMANTIC", "true")
            .with_env("CHATQ_CACHE_SEMANTIC_THRESHOLD", SEMANTIC_THRESHOLD);
    }
    with_stack(services, &plan, async |stack: &mut Stack| {
        let mock_addr = stack.mock.context("the cache scenario needs the mock")?;
        let unique = (args.requests / 2).max(1);
        // A run-specific word, so a shared tier left by another run never answers.
        let run = uuid::Uuid::new_v4().simple().to_string();
        let questions: Vec<String> = (0..unique).map(|i| question(&run, i)).collect();
        mock::reset(mock_addr).await?;
        let started = Instant::now();
        let first: Vec<usize> = (0..unique).collect();
        let mut timed = send_all(stack, &questions, &first, Wording::First, args.clients).await?;
        // The same prompts again, in another order (a fixed stride through them).
        let stride = (unique / 2) | 1;
        let again: Vec<usize> = (0..unique).map(|i| (i * stride + 7) % unique).collect();
        timed.extend(send_all(stack, &questions, &again, Wording::First, args.clients).await?);
        let mut reworded = 0;
        if args.semantic {
            let third: Vec<usize> = again.iter().rev().copied().collect();
            reworded = third.len();
            let reworded_timed =
                send_all(stack, &questions, &third, Wording::Reworded, args.clients).await?;
            timed.extend(reworded_timed);
        }
        let seconds = started.elapsed().as_secs_f64();
        let stats = mock::stats(mock_addr).await?;
        let of = |served: &[Served]| -> Vec<f64> {
            timed
                .iter()
                .filter(|t| served.contains(&t.served))
                .map(|t| t.ms)
                .collect()
        };
        let hits = of(&[Served::Exact, Served::Semantic]);
        let (exact, semantic, misses) = (
            of(&[Served::Exact]),
            of(&[Served::Semantic]),
            of(&[Served::Miss]),
        );
        let semantic = if args.semantic {
            Some(SemanticFigures {
                reworded,
                hits: semantic.len(),
                hit_ms: Percentiles::of_millis(&semantic)?,
                embedding_calls: stats.embeddings,
            })
        } else {
            None
        };
        Ok(CacheResult {
            requests: timed.len(),
            repeated: again.len() + reworded,
            clients: args.clients,
            mock_ttft_ms: args.mock_ttft_ms,
            provider_calls: stats.requests,
            calls_saved: (timed.len() as u64).saturating_sub(stats.requests),
            hits: hits.len(),
            misses: misses.len(),
            hit_ms: Percentiles::of_millis(&exact)?,
            miss_ms: Percentiles::of_millis(&misses)?,
            semantic,
            seconds,
        })
    })
    .await
}

/// Prompt number `index` of a run: besides the run's word, six random words of its own, so that
/// no two prompts are near-duplicates in the mock's embeddings (whose 256 coordinates are shared
/// by every word; words alike in all but their last letter often share theirs).
fn question(run: &str, index: usize) -> String {
    let own: Vec<String> = (0..6)
        .map(|_| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned())
        .collect();
    format!(
        "Question {index} of run {run}: what do {} mean?",
        own.join(" ")
    )
}

/// Sends the questions numbered `prompts`, worded so, from `clients` clients at once.
async fn send_all(
    stack: &Stack,
    questions: &[String],
    prompts: &[usize],
    wording: Wording,
    clients: usize,
) -> anyhow::Result<Vec<Timed>> {
    let next = AtomicUsize::new(0);
    let client = async || -> anyhow::Result<Vec<Timed>> {
        let mut connection = Connection::open(stack.ingress).await?;
        let mut timed = Vec::new();
        while let Some(prompt) = prompts.get(next.fetch_add(1, Ordering::Relaxed)) {
            let question = questions.get(*prompt).context("no such question")?;
            timed.push(ask(&mut connection, stack, question, wording).await?);
        }
        Ok(timed)
    };
    let all = futures::future::try_join_all((0..clients.max(1)).map(|_| client())).await?;
    Ok(all.into_iter().flatten().collect())
}

async fn ask(
    connection: &mut Connection,
    stack: &Stack,
    question: &str,
    wording: Wording,
) -> anyhow::Result<Timed> {
    let question = match wording {
        Wording::First => question.to_owned(),
        Wording::Reworded => format!("{question} Please."),
    };
    let body = serde_json::json!({
        "model": super::stack::MODEL,
        "temperature": 0,
        "messages": [{"role": "user", "content": question}],
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
    let header = |name: &str| response.headers().get(name).map(|v| v.as_bytes().to_vec());
    let served = match (
        header("x-chatq-cache").as_deref(),
        header("x-chatq-cache-tier").as_deref(),
    ) {
        (Some(b"hit"), Some(b"semantic")) => Served::Semantic,
        (Some(b"hit"), _) => Served::Exact,
        _ => Served::Miss,
    };
    response.into_body().collect().await?;
    let ms = sent.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(status.is_success(), "a completion answered {status}");
    Ok(Timed { served, ms })
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
        let exact_hits = self.hits - self.semantic.as_ref().map_or(0, |s| s.hits);
        let _ = writeln!(
            out,
            "  hit   ({:>5})    p50 {:.2}  p99 {:.2}  max {:.2} ms",
            exact_hits, self.hit_ms.p50, self.hit_ms.p99, self.hit_ms.max
        );
        if let Some(semantic) = &self.semantic {
            let _ = writeln!(
                out,
                "  semantic hit ({:>5} of {} reworded)    p50 {:.2}  p99 {:.2}  max {:.2} ms",
                semantic.hits,
                semantic.reworded,
                semantic.hit_ms.p50,
                semantic.hit_ms.p99,
                semantic.hit_ms.max
            );
            let _ = writeln!(
                out,
                "  embedding calls  {} (one for each request neither exact tier held)",
                semantic.embedding_calls
            );
        }
        let _ = writeln!(
            out,
            "  miss  ({:>5})    p50 {:.2}  p99 {:.2}  max {:.2} ms",
            self.misses, self.miss_ms.p50, self.miss_ms.p99, self.miss_ms.max
        );
    }
}
