//! A well-behaved API client: it retries what failed for reasons that pass (no connection, 5xx,
//! 429), after `Retry-After` when it is given, and sends every message with an `Idempotency-Key`,
//! so a retried send never makes a second job. That is the client the guarantees are made to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long a client keeps retrying one request.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
    /// 503 answers this client (and its clones) got: with `Retry-After`, and without.
    unavailable: Arc<[AtomicU64; 2]>,
}

/// A message the service accepted (answered 202, or 200 for a replay).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub job_id: String,
    /// The answer was a replay of a job recorded by an earlier try.
    pub replayed: bool,
}

impl Client {
    pub fn new(base: &str, key: &str) -> Self {
        // reqwest is built without a default TLS backend; installing twice is harmless.
        drop(rustls::crypto::ring::default_provider().install_default());
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: base.to_owned(),
            key: key.to_owned(),
            unavailable: Arc::default(),
        }
    }

    pub fn with_key(&self, key: &str) -> Self {
        Self {
            key: key.to_owned(),
            ..self.clone()
        }
    }

    /// How many 503 answers were retried: (with `Retry-After`, without).
    pub fn unavailable(&self) -> (u64, u64) {
        (
            self.unavailable[0].load(Ordering::Relaxed),
            self.unavailable[1].load(Ordering::Relaxed),
        )
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    /// Sends a request built by `build` until it gets an answer other than a passing failure.
    async fn send_retrying(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value, u32) {
        let deadline = tokio::time::Instant::now() + GIVE_UP_AFTER;
        let mut tries = 0;
        loop {
            tries += 1;
            let wait = match build().send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        let counter = usize::from(retry_after.is_none());
                        self.unavailable[counter].fetch_add(1, Ordering::Relaxed);
                    }
                    let headers = response.headers().clone();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        return (status, headers, body, tries);
                    }
                    retry_after.unwrap_or(Duration::from_millis(200))
                }
                // No connection (the ingress is down or restarting) or a cut-off answer.
                Err(_) => Duration::from_millis(100),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "a request kept failing for {GIVE_UP_AFTER:?}"
            );
            // A client backing off before its next try.
            tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
        }
    }

    /// Creates `n` conversations, a few at a time.
    pub async fn create_conversations(&self, n: usize) -> Vec<String> {
        futures::stream::iter(0..n)
            .map(|i| async move {
                let (status, _, body, _) = self
                    .send_retrying(|| {
                        self.request(Method::POST, "/v1/conversations")
                            .json(&json!({ "title": format!("fault {i}") }))
                    })
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                body["id"].as_str().unwrap().to_owned()
            })
            .buffer_unordered(16)
            .collect()
            .await
    }

    /// Sends one message, retrying with the same idempotency key until it is accepted.
    pub async fn send(&self, conversation: &str, content: &str) -> Accepted {
        let key = format!("fault-{conversation}-{content}");
        let path = format!("/v1/conversations/{conversation}/messages");
        let (status, headers, body, _) = self
            .send_retrying(|| {
                self.request(Method::POST, &path)
                    .header("idempotency-key", &key)
                    .json(&json!({ "content": content }))
            })
            .await;
        assert!(
            status == StatusCode::ACCEPTED || status == StatusCode::OK,
            "message not accepted: {status} {body}"
        );
        Accepted {
            job_id: body["job"]["id"].as_str().unwrap().to_owned(),
            replayed: headers.contains_key("idempotent-replayed"),
        }
    }

    /// Sends one message to each conversation, `concurrency` at a time.
    pub async fn send_to_each(
        &self,
        conversations: &[String],
        concurrency: usize,
    ) -> Vec<Accepted> {
        let sends: Vec<(Self, String, String)> = conversations
            .iter()
            .enumerate()
            .map(|(i, conversation)| (self.clone(), conversation.clone(), format!("question {i}")))
            .collect();
        futures::stream::iter(sends)
            .map(|(client, conversation, content)| async move {
                client.send(&conversation, &content).await
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Value {
        let (status, _, body, _) = self
            .send_retrying(|| self.request(Method::GET, &format!("/v1/jobs/{id}")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Long-polls a job until it is finished.
    pub async fn wait_for_job(&self, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, _, job, _) = self
                .send_retrying(|| self.request(Method::GET, &format!("/v1/jobs/{id}?wait=5")))
                .await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if !matches!(job["status"].as_str(), Some("queued" | "running")) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not finish within {timeout:?}: {job}"
            );
        }
    }

    /// A request answered once, without retrying (for checking error answers).
    pub async fn once(&self, method: Method, path: &str) -> (StatusCode, Value) {
        let response = self.request(method, path).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
