//! The HTTP load generator: a fixed number of keep-alive connections, each sending its next
//! request as soon as the previous one is answered (a closed loop, like `wrk` or `oha`).
//!
//! It shares the machine with the system under test, so it is built to cost little per request:
//! one raw HTTP/1.1 connection per task (no pool, no per-request routing), request paths and bodies
//! built before the clock starts, and one latency histogram per connection, merged at the end.
//! All connections are opened before the clock starts, so the figures do not include the
//! handshakes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use super::figures::latency_histogram;
use super::progress;

/// Which requests a load sends.
#[derive(Debug, Clone)]
pub enum Requests {
    /// Each path once (for example one conversation per request), then stop.
    EachOnce(Arc<[Uri]>),
    /// The same path again and again until the duration has passed.
    Repeat { path: Uri, duration: Duration },
}

/// One load to run against one server.
#[derive(Debug, Clone)]
pub struct Load {
    /// Shown beside the progress bar.
    pub label: String,
    pub target: SocketAddr,
    pub method: Method,
    pub requests: Requests,
    /// Sent with every request; empty means no body.
    pub body: Bytes,
    /// `Authorization: Bearer …`, when the endpoint needs a key.
    pub api_key: Option<String>,
    /// Connections, each with one request in flight at a time.
    pub connections: usize,
}

/// What a load measured.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    /// From the moment every connection was open to the last answer.
    pub elapsed: Duration,
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer (connection refused, reset, or closed mid-request).
    pub io_errors: u64,
    pub first_io_error: Option<String>,
    /// Latency of every answered request, in microseconds.
    pub latency: Histogram<u64>,
}

impl LoadOutcome {
    pub fn answered_with(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Requests answered with `status`, per second of the load.
    pub fn rate_of(&self, status: u16) -> f64 {
        per_second(self.answered_with(status), self.elapsed)
    }
}

pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Runs the load to its end and returns what it measured.
///
/// # Errors
/// Building a request fails (a path that is not a valid URI), or a connection task panicked.
/// Failed requests are counted, not returned as errors.
pub async fn run(load: Load) -> anyhow::Result<LoadOutcome> {
    let connections = load.connections.max(1);
    let total = match &load.requests {
        Requests::EachOnce(paths) => Some(paths.len() as u64),
        Requests::Repeat { .. } => None,
    };
    let shared = Arc::new(Shared::new(&load)?);
    let start = Arc::new(Barrier::new(connections + 1));
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(connection_loop(shared.clone(), start.clone()));
    }
    // Every connection is open (or failed to open): start the clock.
    start.wait().await;
    let started = *shared.started.get_or_init(Instant::now);
    let bar = match (&load.requests, total) {
        (Requests::Repeat { duration, .. }, _) => progress::timed(&load.label, *duration),
        (_, Some(total)) => progress::counted(&load.label, total),
        (_, None) => progress::counted(&load.label, 0),
    };

    let mut outcome = LoadOutcome {
        elapsed: Duration::ZERO,
        by_status: BTreeMap::new(),
        io_errors: 0,
        first_io_error: None,
        latency: latency_histogram()?,
    };
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let tally = joined.context("a load connection task failed")?;
                outcome.merge(tally)?;
            }
            _ = ticks.tick() => bar.update(shared.completed.load(Ordering::Relaxed), started.elapsed()),
        }
    }
    outcome.elapsed = shared
        .last_answer_elapsed()
        .unwrap_or_else(|| started.elapsed());
    bar.finish(shared.completed.load(Ordering::Relaxed));
    Ok(outcome)
}

/// What every connection task reads: the requests to send and where to count progress.
struct Shared {
    target: SocketAddr,
    method: Method,
    requests: Requests,
    body: Bytes,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
    json_body: bool,
    /// Index of the next path of [`Requests::EachOnce`].
    next: AtomicUsize,
    completed: AtomicU64,
    /// The start of the clock, set by whichever of the tasks and the coordinator passes the start
    /// barrier first, so all of them measure from the same instant.
    started: std::sync::OnceLock<Instant>,
    /// Microseconds from the start to the latest answer, so the load's duration ends with its
    /// last answer rather than when the slowest task noticed there was nothing left.
    last_answer_micros: AtomicU64,
}

impl Shared {
    fn new(load: &Load) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&load.target.to_string())
            .context("the target address is not a valid Host header")?;
        let authorization = load
            .api_key
            .as_ref()
            .map(|key| HeaderValue::from_str(&format!("Bearer {key}")))
            .transpose()
            .context("the API key is not a valid header value")?;
        Ok(Self {
            target: load.target,
            method: load.method.clone(),
            requests: load.requests.clone(),
            body: load.body.clone(),
            host,
            authorization,
            json_body: !load.body.is_empty(),
            next: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            started: std::sync::OnceLock::new(),
            last_answer_micros: AtomicU64::new(0),
        })
    }

    /// The next request to send, or `None` when the load is over.
    fn next_request(&self) -> Option<anyhow::Result<Request<Full<Bytes>>>> {
        let path = match &self.requests {
            Requests::EachOnce(paths) => {
                let index = self.next.fetch_add(1, Ordering::Relaxed);
                paths.get(index)?.clone()
            }
            Requests::Repeat { path, duration } => {
                let started = self.started.get()?;
                if started.elapsed() >= *duration {
                    return None;
                }
                path.clone()
            }
        };
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if self.json_body {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Some(
            request
                .body(Full::new(self.body.clone()))
                .context("cannot build a request"),
        )
    }

    fn answered(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if let Some(started) = self.started.get() {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.last_answer_micros.fetch_max(micros, Ordering::Relaxed);
        }
    }

    fn last_answer_elapsed(&self) -> Option<Duration> {
        let micros = self.last_answer_micros.load(Ordering::Relaxed);
        (micros > 0).then(|| Duration::from_micros(micros))
    }
}

/// What one connection saw.
struct Tally {
    by_status: BTreeMap<u16, u64>,
    io_errors: u64,
    first_io_error: Option<String>,
    latency: Histogram<u64>,
}

impl LoadOutcome {
    fn merge(&mut self, tally: anyhow::Result<Tally>) -> anyhow::Result<()> {
        let tally = tally?;
        for (status, count) in tally.by_status {
            *self.by_status.entry(status).or_default() += count;
        }
        self.io_errors += tally.io_errors;
        if self.first_io_error.is_none() {
            self.first_io_error = tally.first_io_error;
        }
        self.latency
            .add(&tally.latency)
            .context("cannot merge latency histograms")
    }
}

/// An open HTTP/1.1 connection: the sender, and the task driving the socket (aborted on drop).
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    _driver: AbortOnDropHandle<Result<(), hyper::Error>>,
}

impl Connection {
    /// Connects, with Nagle's algorithm off (every request and chunk is sent at once).
    ///
    /// # Errors
    /// The server cannot be reached.
    pub async fn open(target: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target)
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake failed")?;
        Ok(Self {
            sender,
            _driver: AbortOnDropHandle::new(tokio::spawn(driver)),
        })
    }
}

impl Connection {
    /// Sends one request once the connection is free; the caller reads the response's body.
    ///
    /// # Errors
    /// The connection failed or was closed.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }

    /// Whether another request can be sent on it (the server has not closed it).
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// The status of one `GET path` (readiness checks), on a fresh connection.
///
/// # Errors
/// The server cannot be reached or does not answer.
pub async fn get_status(target: SocketAddr, path: &'static str) -> anyhow::Result<u16> {
    let mut connection = Connection::open(target).await?;
    let request = Request::get(Uri::from_static(path))
        .header(HOST, target.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = connection.sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// Sends requests on one connection until the load is over, reconnecting after an I/O error.
async fn connection_loop(shared: Arc<Shared>, start: Arc<Barrier>) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        by_status: BTreeMap::new(),
        io_errors: 0,
        first_io_error: None,
        latency: latency_histogram()?,
    };
    let note_error = |tally: &mut Tally, err: anyhow::Error| {
        tally.io_errors += 1;
        if tally.first_io_error.is_none() {
            tally.first_io_error = Some(format!("{err:#}"));
        }
    };
    let mut connection = Connection::open(shared.target).await;
    start.wait().await;
    shared.started.get_or_init(Instant::now);
    while let Some(request) = shared.next_request() {
        let request = request?;
        let open = match &mut connection {
            Ok(open) => open,
            Err(_) => {
                connection = Connection::open(shared.target).await;
                match &mut connection {
                    Ok(open) => open,
                    Err(err) => {
                        note_error(&mut tally, anyhow::anyhow!("{err:#}"));
                        shared.answered();
                        continue;
                    }
                }
            }
        };
        let sent = Instant::now();
        let answered = async {
            open.sender.ready().await?;
            let response = open.sender.send_request(request).await?;
            let status = response.status().as_u16();
            // Read the whole body: the connection is reused only once it is consumed.
            response.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        }
        .await;
        match answered {
            Ok(status) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(micros.max(1));
                *tally.by_status.entry(status).or_default() += 1;
            }
            Err(err) => {
                note_error(&mut tally, err.into());
                connection = Err(anyhow::anyhow!("connection lost"));
            }
        }
        shared.answered();
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(router: axum::Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    #[tokio::test]
    async fn each_path_is_sent_once_and_every_answer_is_counted() {
        use axum::routing::post;
        let router = axum::Router::new()
            .route(
                "/accept/{n}",
                post(|| async { axum::http::StatusCode::ACCEPTED }),
            )
            .route(
                "/busy/{n}",
                post(|| async { axum::http::StatusCode::CONFLICT }),
            );
        let target = serve(router).await;
        let paths: Vec<Uri> = (0..500)
            .map(|n| {
                let kind = if n % 5 == 0 { "busy" } else { "accept" };
                Uri::try_from(format!("/{kind}/{n}")).unwrap()
            })
            .collect();
        let outcome = run(Load {
            label: "test".into(),
            target,
            method: Method::POST,
            requests: Requests::EachOnce(paths.into()),
            body: Bytes::from_static(b"{}"),
            api_key: Some("k".into()),
            connections: 8,
        })
        .await
        .unwrap();
        assert_eq!(outcome.answered_with(202), 400);
        assert_eq!(outcome.answered_with(409), 100);
        assert_eq!(outcome.io_errors, 0);
        assert_eq!(outcome.latency.len(), 500);
    }

    #[tokio::test]
    async fn requests_without_an_answer_are_counted_as_io_errors() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = unused.local_addr().unwrap();
        drop(unused);
        let outcome = run(Load {
            label: "test".into(),
            target,
            method: Method::GET,
            requests: Requests::EachOnce(vec![Uri::from_static("/"); 10].into()),
            body: Bytes::new(),
            api_key: None,
            connections: 2,
        })
        .await
        .unwrap();
        assert_eq!(outcome.io_errors, 10);
        assert!(outcome.first_io_error.unwrap().contains("connect"));
    }
}
