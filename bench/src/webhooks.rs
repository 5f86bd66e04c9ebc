//! `webhooks`: how long after a result commits its webhook arrives, at a fixed arrival rate (500
//! chat completions/s by default), every job's `job.succeeded` sent to a receiver in this
//! process.
//!
//! The receiver notes the wall-clock time each event arrives; the outbox row says when the result
//! committed (`created_at`, the committing transaction's time). Their difference is the delivery
//! latency after commit: the worker's next look at the outbox (`CHATQ_WEBHOOK_POLL_INTERVAL_MS`),
//! the claim, the signed POST and its answer. Both clocks are this machine's.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::args::GeneralArgs;
use super::cpu::CpuWatch;
use super::figures::Percentiles;
use super::load::Connection;
use super::phase::{self, PhaseSummary};
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::traffic::{Answer, completions_load};

/// Seconds to wait, after the load, for the last deliveries.
const DRAIN_SECS: u64 = 30;

#[derive(Debug, Clone, clap::Args)]
pub struct WebhooksArgs {
    /// webhooks: chat completions per second (open loop), each delivering one webhook.
    #[arg(id = "webhooks-rate", long = "webhooks-rate", default_value_t = 500.0)]
    pub rate: f64,
    /// webhooks: seconds the load runs.
    #[arg(
        id = "webhooks-seconds",
        long = "webhooks-seconds",
        default_value_t = 10.0
    )]
    pub seconds: f64,
    /// webhooks: the mock provider's latency, in milliseconds.
    #[arg(
        id = "webhooks-mock-ms",
        long = "webhooks-mock-ms",
        default_value_t = 50
    )]
    pub mock_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhooksResult {
    pub workers: usize,
    pub poll_interval_ms: String,
    pub load: PhaseSummary,
    /// Events the outbox held for the run, and those the receiver got.
    pub owed: usize,
    pub received: usize,
    /// Deliveries of one event after its first (at least once: a repeat is allowed, and counted).
    pub repeats: usize,
    /// Commit to arrival at the receiver, per event (its first arrival).
    pub latency_ms: Percentiles,
}

/// Arrival times (Unix seconds) by job uuid, in order of arrival.
type Arrivals = Arc<Mutex<Vec<(uuid::Uuid, f64)>>>;

/// Runs the scenario on a stack of its own.
///
/// # Errors
/// The stack does not start, the endpoint cannot be registered, or the load cannot run.
pub async fn run(
    args: &GeneralArgs,
    webhooks: &WebhooksArgs,
    services: &Services,
) -> anyhow::Result<WebhooksResult> {
    let arrivals: Arrivals = Arc::default();
    let stop = CancellationToken::new();
    let receiver = serve_receiver(arrivals.clone(), stop.clone()).await?;
    let mock = MockPlan {
        ttft_ms: webhooks.mock_ms,
        token_delay_ms: 0,
        tokens: args.mock_tokens,
    };
    let plan = StackPlan::new(args.workers, args.worker_concurrency, Some(mock))
        .without_key_rate_limit()
        .with_env("CHATQ_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true");
    let poll_interval_ms = args
        .env
        .iter()
        .find_map(|e| e.strip_prefix("CHATQ_WEBHOOK_POLL_INTERVAL_MS="))
        .unwrap_or("200 (default)")
        .to_owned();
    let result = with_stack(services, &plan, async |stack: &mut Stack| {
        register(stack, receiver).await?;
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let load = completions_load(
            "webhooks: completions",
            stack,
            stack.ingress,
            webhooks.rate,
            webhooks.seconds,
            false,
            Answer::Text,
        );
        let (load, _) = phase::run(load, &watch, 200).await?;
        let committed: Vec<(uuid::Uuid, f64)> = sqlx::query_as(
            "SELECT object_id, extract(epoch FROM created_at)::float8 FROM webhook_outbox",
        )
        .fetch_all(&stack.scratch.pool)
        .await
        .context("cannot read the outbox")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(DRAIN_SECS);
        while received_events(&arrivals) < committed.len() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stack.check_alive()?;
        let committed: HashMap<uuid::Uuid, f64> = committed.into_iter().collect();
        let arrived = arrivals
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        let mut first: HashMap<uuid::Uuid, f64> = HashMap::new();
        for (job, at) in &arrived {
            first.entry(*job).or_insert(*at);
        }
        let latencies: Vec<f64> = first
            .iter()
            .filter_map(|(job, at)| Some((at - committed.get(job)?) * 1000.0))
            .collect();
        Ok(WebhooksResult {
            workers: args.workers,
            poll_interval_ms: poll_interval_ms.clone(),
            load,
            owed: committed.len(),
            received: first.len(),
            repeats: arrived.len() - first.len(),
            latency_ms: Percentiles::of_millis(&latencies)?,
        })
    })
    .await;
    stop.cancel();
    result
}

fn received_events(arrivals: &Arrivals) -> usize {
    arrivals.lock().map_or(0, |a| {
        a.iter()
            .map(|(job, _)| job)
            .collect::<std::collections::HashSet<_>>()
            .len()
    })
}

/// Registers the receiver for every job event.
async fn register(stack: &Stack, receiver: SocketAddr) -> anyhow::Result<()> {
    let body = serde_json::json!({"url": format!("http://{receiver}/hook"), "events": ["job.*"]});
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/webhooks")
        .header(HOST, stack.ingress.to_string())
        .header(AUTHORIZATION, format!("Bearer {}", stack.api_key))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let mut connection = Connection::open(stack.ingress).await?;
    let response = connection.send(request).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.as_u16() == 201,
        "registering the receiver answered {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// A receiver on 127.0.0.1 that answers 204 and notes when each event arrived.
async fn serve_receiver(arrivals: Arrivals, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let arrivals = arrivals.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let arrivals = arrivals.clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let at = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs_f64();
                        let job = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|event| {
                                event["data"]["id"]
                                    .as_str()?
                                    .parse::<chatq_common::ids::JobId>()
                                    .ok()
                            });
                        if let (Some(job), Ok(mut arrivals)) = (job, arrivals.lock()) {
                            arrivals.push((job.as_uuid(), at));
                        }
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(204)
                                .body(Full::new(Bytes::new()))
                                .unwrap_or_default(),
                        )
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Ok(addr)
}

impl WebhooksResult {
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nWEBHOOKS: one job.succeeded per chat completion, open loop; {} workers; poll interval {} ms",
            self.workers, self.poll_interval_ms
        );
        self.load.render(out);
        let _ = writeln!(
            out,
            "  events owed {}, received {} ({} repeats)",
            self.owed, self.received, self.repeats
        );
        let _ = writeln!(out, "  delivery latency after commit: {}", self.latency_ms);
    }
}
