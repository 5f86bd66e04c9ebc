//! The open-loop HTTP generator: request `i` is due `i / rate` seconds after the start, whether or
//! not the earlier ones were answered, as independent clients would send them. A closed loop
//! (see [`super::load`]) slows down with the server and so hides how long a request waits when
//! the server falls behind; here a slow answer does not delay the next request.
//!
//! Requests run on keep-alive HTTP/1.1 connections: a free one if there is one, a new one
//! otherwise, up to `max_connections`. A request due while all of them are busy waits for one
//! and is counted as *late* (it could not start on time); its latency is then also measured from
//! when it was due, so the wait is not hidden. Every request is recorded ([`Sent`]), and the
//! scenarios make their own histograms from the records.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Uri};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::figures::latency_histogram;
use super::load::Connection;
use super::progress;
use super::sse_frames::{SseBuffer, chunk_content};

/// How far behind its time a request may start and still count as on time: tokio's timers tick
/// in milliseconds, so a request due between two ticks starts at the next one.
const ON_TIME_SLACK: Duration = Duration::from_millis(2);

/// One request to send.
#[derive(Debug, Clone)]
pub struct Planned {
    pub method: Method,
    pub path: Uri,
    /// JSON; empty for none.
    pub body: Bytes,
}

/// How much of each response to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The whole body, at once.
    Whole,
    /// A streamed chat completion: note when the first chunk carrying content arrives, then read
    /// the rest of the stream up to `data: [DONE]`.
    FirstContent,
}

/// One open-loop load.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    pub label: String,
    pub target: SocketAddr,
    /// Requests per second.
    pub rate: f64,
    pub requests: Vec<Planned>,
    pub api_key: Option<String>,
    /// Connections opened before the clock starts.
    pub warm_connections: usize,
    /// Most connections in use at once.
    pub max_connections: usize,
    pub read: Read,
    /// A response header to keep for each request (e.g. `x-chatq-job-id`).
    pub capture_header: Option<&'static str>,
    /// Longest a request may take before it is recorded as unanswered.
    pub timeout: Duration,
    /// Draw a progress bar for this load (off for loads that run side by side under a bar of
    /// their own: bars drawn at once would overwrite each other).
    pub progress: bool,
}

/// What happened to one request. Times are from the start of the clock.
#[derive(Debug, Clone)]
pub struct Sent {
    pub index: usize,
    /// When the schedule said to send it.
    pub due: Duration,
    /// When it was sent: later than `due` when it waited for a connection.
    pub sent: Duration,
    /// When the first chunk carrying content arrived ([`Read::FirstContent`]).
    pub first_content: Option<Duration>,
    /// When the whole response had been read.
    pub answered: Duration,
    pub status: Option<u16>,
    /// The response had a `Retry-After` header.
    pub retry_after: bool,
    /// The captured header's value.
    pub header: Option<String>,
    /// A streamed response ended with `data: [DONE]`.
    pub stream_done: bool,
    pub error: Option<String>,
    /// A connection was free when it was due, and it started within [`ON_TIME_SLACK`] of it.
    pub on_time: bool,
}

impl Sent {
    /// From sending to the whole answer.
    pub fn latency(&self) -> Duration {
        self.answered.saturating_sub(self.sent)
    }

    /// From when it was due to the whole answer: what a client that could not start on time saw.
    pub fn latency_from_due(&self) -> Duration {
        self.answered.saturating_sub(self.due)
    }

    /// From sending to the first content.
    pub fn time_to_first_content(&self) -> Option<Duration> {
        self.first_content.map(|at| at.saturating_sub(self.sent))
    }
}

/// Every request's record, in the order they were due.
#[derive(Debug, Clone)]
pub struct OpenLoopOutcome {
    pub sent: Vec<Sent>,
    /// From the start of the clock to the last answer.
    pub elapsed: Duration,
    /// The start of the clock on the wall, to place `sent` and `answered` beside the times
    /// Postgres records (same machine, same clock).
    pub started_wall: std::time::SystemTime,
}

impl OpenLoopOutcome {
    pub fn late(&self) -> usize {
        self.sent.iter().filter(|sent| !sent.on_time).count()
    }

    pub fn with_status(&self, status: u16) -> impl Iterator<Item = &Sent> {
        self.sent
            .iter()
            .filter(move |sent| sent.status == Some(status))
    }

    /// `status × count`, and unanswered requests, for the report.
    pub fn answers(&self) -> String {
        let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
        let mut unanswered = 0u64;
        let mut first_error = None;
        for sent in &self.sent {
            match sent.status {
                Some(status) if sent.error.is_none() => *by_status.entry(status).or_default() += 1,
                _ => {
                    unanswered += 1;
                    first_error = first_error.or(sent.error.as_deref());
                }
            }
        }
        let mut parts: Vec<String> = by_status
            .iter()
            .map(|(status, count)| format!("{status} × {count}"))
            .collect();
        if unanswered > 0 {
            parts.push(format!(
                "no whole answer × {unanswered} (first: {})",
                first_error.unwrap_or("?")
            ));
        }
        parts.join(", ")
    }
}

/// A histogram, in microseconds, of some durations.
///
/// # Errors
/// The histogram cannot be created (not in practice).
pub fn histogram(values: impl Iterator<Item = Duration>) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = latency_histogram()?;
    for value in values {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(micros.max(1));
    }
    Ok(histogram)
}

/// What the request tasks share.
struct Shared {
    target: SocketAddr,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
    read: Read,
    capture_header: Option<&'static str>,
    timeout: Duration,
    start: Instant,
    started_wall: std::time::SystemTime,
    idle: Mutex<Vec<Connection>>,
    records: Mutex<Vec<Sent>>,
    done: AtomicU64,
}

/// Runs the load: every request is sent at its time (or as soon as a connection frees up), and
/// the load ends when every one has been answered or has timed out.
///
/// # Errors
/// The warm connections cannot be opened, or a header is invalid.
pub async fn run(plan: OpenLoop) -> anyhow::Result<OpenLoopOutcome> {
    let total = plan.requests.len();
    let authorization = plan
        .api_key
        .as_ref()
        .map(|key| HeaderValue::from_str(&format!("Bearer {key}")))
        .transpose()
        .context("the API key is not a valid header value")?;
    let warm = futures::future::try_join_all(
        (0..plan.warm_connections.min(plan.max_connections)).map(|_| Connection::open(plan.target)),
    )
    .await?;
    let shared = Arc::new(Shared {
        target: plan.target,
        host: HeaderValue::from_str(&plan.target.to_string())?,
        authorization,
        read: plan.read,
        capture_header: plan.capture_header,
        timeout: plan.timeout,
        start: Instant::now(),
        started_wall: std::time::SystemTime::now(),
        idle: Mutex::new(warm),
        records: Mutex::new(Vec::with_capacity(total)),
        done: AtomicU64::new(0),
    });
    let permits = Arc::new(Semaphore::new(plan.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let bar = plan
        .progress
        .then(|| progress::counted(&plan.label, total as u64));
    let interval = 1.0 / plan.rate.max(1e-3);
    let dispatch = async {
        for (index, planned) in plan.requests.into_iter().enumerate() {
            let due = Duration::from_secs_f64(index as f64 * interval);
            tokio::time::sleep_until(shared.start + due).await;
            let (permit, on_time) = match permits.clone().try_acquire_owned() {
                Ok(permit) => (permit, true),
                Err(_) => (permits.clone().acquire_owned().await?, false),
            };
            let shared = shared.clone();
            tracker.spawn(async move {
                let record = exchange(&shared, index, due, on_time, planned).await;
                drop(permit);
                shared
                    .records
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(record);
                shared.done.fetch_add(1, Ordering::Relaxed);
            });
        }
        tracker.close();
        Ok::<(), anyhow::Error>(())
    };
    let watch = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = tracker.wait() => break,
                _ = ticks.tick() => if let Some(bar) = &bar {
                    bar.update(shared.done.load(Ordering::Relaxed), shared.start.elapsed());
                },
            }
        }
    };
    let (dispatched, ()) = tokio::join!(dispatch, watch);
    dispatched?;
    if let Some(bar) = &bar {
        bar.finish(shared.done.load(Ordering::Relaxed));
    }
    let mut sent = std::mem::take(
        &mut *shared
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    sent.sort_by_key(|record| record.index);
    let elapsed = sent
        .iter()
        .map(|record| record.answered)
        .max()
        .unwrap_or_default();
    Ok(OpenLoopOutcome {
        sent,
        elapsed,
        started_wall: shared.started_wall,
    })
}

/// Sends one request and reads its answer, within the timeout.
async fn exchange(
    shared: &Shared,
    index: usize,
    due: Duration,
    on_time: bool,
    planned: Planned,
) -> Sent {
    let sent = shared.start.elapsed();
    let mut record = Sent {
        index,
        due,
        sent,
        first_content: None,
        answered: Duration::ZERO,
        status: None,
        retry_after: false,
        header: None,
        stream_done: false,
        error: None,
        on_time: on_time && sent.saturating_sub(due) <= ON_TIME_SLACK,
    };
    match tokio::time::timeout(shared.timeout, send_and_read(shared, planned, &mut record)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => record.error = Some(format!("{err:#}")),
        Err(_) => record.error = Some(format!("no answer within {:?}", shared.timeout)),
    }
    record.answered = shared.start.elapsed();
    record
}

async fn send_and_read(shared: &Shared, planned: Planned, record: &mut Sent) -> anyhow::Result<()> {
    let idle = shared
        .idle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let mut connection = match idle {
        Some(connection) if connection.is_open() => connection,
        _ => Connection::open(shared.target).await?,
    };
    let mut request = Request::builder()
        .method(planned.method)
        .uri(planned.path)
        .header(HOST, shared.host.clone());
    if let Some(authorization) = &shared.authorization {
        request = request.header(AUTHORIZATION, authorization.clone());
    }
    if !planned.body.is_empty() {
        request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let request = request.body(Full::new(planned.body))?;
    let response = connection.send(request).await?;
    record.status = Some(response.status().as_u16());
    record.retry_after = response.headers().contains_key(RETRY_AFTER);
    record.header = shared.capture_header.and_then(|name| {
        let value = response.headers().get(name)?;
        Some(value.to_str().ok()?.to_owned())
    });
    let mut body = response.into_body();
    match shared.read {
        Read::Whole => {
            body.collect().await?;
        }
        Read::FirstContent => {
            let mut buffer = SseBuffer::default();
            while let Some(frame) = body.frame().await {
                let Some(data) = frame?.data_ref().cloned() else {
                    continue;
                };
                for event in buffer.push(&data) {
                    if event.data == "[DONE]" {
                        record.stream_done = true;
                    } else if record.first_content.is_none() && chunk_content(&event.data).is_some()
                    {
                        record.first_content = Some(shared.start.elapsed());
                    }
                }
            }
        }
    }
    if connection.is_open() {
        shared
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(connection);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_start_on_schedule_and_late_ones_are_counted() {
        use axum::routing::post;
        let router = axum::Router::new().route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                axum::http::StatusCode::ACCEPTED
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let planned = Planned {
            method: Method::POST,
            path: Uri::from_static("/slow"),
            body: Bytes::new(),
        };
        // 100/s for 0.2 s with 100 ms answers needs about 10 connections; allow 5.
        let outcome = run(OpenLoop {
            label: "test".into(),
            target,
            rate: 100.0,
            requests: vec![planned; 20],
            api_key: None,
            warm_connections: 2,
            max_connections: 5,
            read: Read::Whole,
            capture_header: None,
            timeout: Duration::from_secs(5),
            progress: false,
        })
        .await
        .unwrap();
        assert_eq!(outcome.with_status(202).count(), 20);
        // Five connections for about ten needed: at least five late, and not all of them (the
        // first few had a connection free; how many started within the 2 ms slack depends on
        // how busy the machine is, so only "not every one" is asserted).
        assert!((5..20).contains(&outcome.late()), "{}", outcome.late());
        let first = &outcome.sent[0];
        assert!(first.latency() >= Duration::from_millis(100));
        let last = &outcome.sent[19];
        assert_eq!(last.due, Duration::from_secs_f64(0.19));
        assert!(last.latency_from_due() > last.latency());
    }
}
