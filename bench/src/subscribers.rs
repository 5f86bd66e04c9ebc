//! Many clients following job events at once: one HTTP/1.1 connection each, `GET
//! /v1/jobs/{id}/events`, read until the stream ends. Each keeps what it was sent, so the scenario
//! can check afterwards that every subscriber got the whole reply and the terminal event.
//!
//! Connections are opened a few hundred at a time (the ingress's listen backlog is finite, and a
//! SYN dropped there costs a second's retransmission), each slot held until the stream's first
//! event has arrived: that event (`job.queued`, made by the ingress) says the subscription is in
//! place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use chatq_common::ids::JobId;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, HOST};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::load::Connection;
use super::sse_frames::SseBuffer;

/// Subscriptions being opened at once.
const OPENING_AT_ONCE: usize = 256;
/// Longest silence on a stream (the ingress sends keep-alives every 15 s by default).
const SILENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// What one subscriber received.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub job: JobId,
    pub status: Option<u16>,
    pub events: usize,
    pub started: bool,
    /// Every `message.delta`'s text, in order (reset if the reply restarted).
    pub text: String,
    /// The kind of the terminal event, if one came.
    pub terminal: Option<String>,
    /// The stream ended (the server closed it) after the terminal event.
    pub ended: bool,
    pub error: Option<String>,
}

/// Counters the scenario watches while the subscribers run.
#[derive(Debug, Default)]
pub struct Counters {
    /// Streams that have received their first event.
    pub ready: AtomicUsize,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Subscribers done (stream ended, or failed).
    pub finished: AtomicUsize,
}

/// Running subscribers.
pub struct Subscribers {
    pub counters: Arc<Counters>,
    tasks: JoinSet<Received>,
}

impl Subscribers {
    /// Starts one subscriber per entry of `jobs` (a job listed twice gets two).
    pub fn start(target: SocketAddr, api_key: &str, jobs: &[JobId]) -> anyhow::Result<Self> {
        let authorization = hyper::header::HeaderValue::from_str(&format!("Bearer {api_key}"))
            .context("the API key is not a valid header value")?;
        let counters = Arc::new(Counters::default());
        let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
        let mut tasks = JoinSet::new();
        for job in jobs {
            let (job, counters, opening) = (*job, counters.clone(), opening.clone());
            let authorization = authorization.clone();
            tasks.spawn(async move {
                let mut received = Received {
                    job,
                    ..Received::default()
                };
                if let Err(err) =
                    follow(target, authorization, &counters, &opening, &mut received).await
                {
                    received.error = Some(format!("{err:#}"));
                }
                counters.finished.fetch_add(1, Ordering::Relaxed);
                received
            });
        }
        Ok(Self { counters, tasks })
    }

    /// Waits for every subscriber to end and returns what each received.
    ///
    /// # Errors
    /// A subscriber task panicked.
    pub async fn finish(mut self) -> anyhow::Result<Vec<Received>> {
        let mut all = Vec::with_capacity(self.tasks.len());
        while let Some(joined) = self.tasks.join_next().await {
            all.push(joined.context("a subscriber task failed")?);
        }
        Ok(all)
    }
}

/// Decrements the open-connection count however the subscriber ends.
struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn follow(
    target: SocketAddr,
    authorization: hyper::header::HeaderValue,
    counters: &Counters,
    opening: &Semaphore,
    received: &mut Received,
) -> anyhow::Result<()> {
    let slot = opening.acquire().await?;
    let mut connection = Connection::open(target).await?;
    counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&counters.open);
    let request = Request::get(format!("/v1/jobs/{}/events", received.job))
        .header(HOST, target.to_string())
        .header(AUTHORIZATION, authorization)
        .body(Full::new(Bytes::new()))?;
    let response = connection.send(request).await?;
    received.status = Some(response.status().as_u16());
    let mut body = response.into_body();
    if received.status != Some(200) {
        drop(slot);
        let text = body.collect().await?.to_bytes();
        anyhow::bail!(
            "answered {:?}: {}",
            received.status,
            String::from_utf8_lossy(&text)
        );
    }
    let mut slot = Some(slot);
    let mut buffer = SseBuffer::default();
    loop {
        let frame = tokio::time::timeout(SILENCE_TIMEOUT, body.frame())
            .await
            .with_context(|| format!("nothing received for {SILENCE_TIMEOUT:?}"))?;
        let Some(frame) = frame else {
            received.ended = received.terminal.is_some();
            return Ok(());
        };
        let Some(data) = frame?.data_ref().cloned() else {
            continue;
        };
        for event in buffer.push(&data) {
            received.events += 1;
            if slot.take().is_some() {
                counters.ready.fetch_add(1, Ordering::Relaxed);
            }
            match event.event.as_deref().unwrap_or("") {
                "job.started" => {
                    received.started = true;
                    received.text.clear();
                }
                "message.delta" => {
                    let data: serde_json::Value =
                        serde_json::from_str(&event.data).unwrap_or_default();
                    received.text.push_str(data["delta"].as_str().unwrap_or(""));
                }
                kind @ ("job.succeeded" | "job.failed" | "job.cancelled") => {
                    received.terminal = Some(kind.to_owned());
                }
                _ => {}
            }
        }
    }
}
