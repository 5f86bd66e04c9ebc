//! A webhook receiver on 127.0.0.1 for the API and fault tests: it records every request it
//! gets (headers and body) and answers as the test asks: 500 to the first attempts of each
//! event, 429 with `Retry-After` to the first, or never.

#![allow(
    dead_code,
    reason = "the API tests and the fault tests each use a part of it"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use axum::routing::post;
use tokio::sync::Notify;

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// 500 to the first this many attempts of each event (by `webhook-id`), then 200.
    FailFirst(usize),
    /// Never: the request is read and the connection held open, unanswered.
    Never,
    /// 429 with `Retry-After: <secs>` to the first attempt of each event, then 200.
    ThrottleFirst { retry_after_secs: u64 },
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    /// The status it was answered with (none: never answered).
    pub status: Option<u16>,
    pub at: std::time::Instant,
}

impl Received {
    pub fn id(&self) -> &str {
        &self.headers["webhook-id"]
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a delivery's body is JSON")
    }
}

#[derive(Default)]
struct Log {
    received: Mutex<Vec<Received>>,
    changed: Notify,
}

struct Receiver {
    answer: Answer,
    log: Arc<Log>,
}

/// A running receiver.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    log: Arc<Log>,
}

impl WebhookReceiver {
    pub async fn start(answer: Answer) -> Self {
        let log = Arc::new(Log::default());
        let receiver = Arc::new(Receiver {
            answer,
            log: log.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(receiver);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, log }
    }

    /// The URL to register, with a literal address.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds of the requests so far (or panics after `timeout`).
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.log.changed.notified();
            let received = self.received();
            if done(&received) {
                return received;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "the receiver never saw {what}; it got {:#?}",
                    self.received()
                );
            }
        }
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let id = headers.get("webhook-id").cloned().unwrap_or_default();
    let earlier = receiver
        .log
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.headers.get("webhook-id") == Some(&id))
        .count();
    let (status, retry_after) = match receiver.answer {
        Answer::Never => (None, None),
        Answer::FailFirst(failures) => (Some(if earlier < failures { 500 } else { 200 }), None),
        Answer::ThrottleFirst { retry_after_secs } if earlier == 0 => {
            (Some(429), Some(retry_after_secs))
        }
        Answer::ThrottleFirst { .. } => (Some(200), None),
    };
    receiver.log.received.lock().unwrap().push(Received {
        headers,
        body,
        status,
        at: std::time::Instant::now(),
    });
    receiver.log.changed.notify_waiters();
    let Some(status) = status else {
        return std::future::pending().await;
    };
    let mut answer = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(secs) = retry_after {
        answer
            .headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    answer
}
