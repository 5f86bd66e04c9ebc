//! The reply cache across worker processes: identical requests spread over two workers make one
//! provider call, a worker that died while calling blocks nobody for long, and the shared tier
//! outlives a worker's restart.

use std::time::Duration;

use chatq_mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Stack, StackOptions};

fn deterministic(question: &str) -> Value {
    json!({
        "model": "mock-model",
        "temperature": 0,
        "messages": [{"role": "user", "content": question}],
    })
}

/// A chat completion through the stack's ingress: the `x-chatq-cache` header and the content.
async fn complete(stack: &Stack, question: &str) -> (String, String) {
    let response = stack
        .client
        .request(Method::POST, "/v1/chat/completions")
        .json(&deterministic(question))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cache = response.headers()["x-chatq-cache"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    (cache, content)
}

/// Jobs each worker finished, by the name its claims carry.
async fn finished_by(stack: &Stack, worker: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'succeeded' AND claimed_by LIKE $1",
    )
    .bind(format!("{worker}-%"))
    .fetch_one(&stack.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_a_hundred_identical_requests_over_two_workers_make_one_provider_call() {
    let stack = Stack::start(
        "cache_coalesce",
        StackOptions {
            workers: 2,
            worker_concurrency: 16,
            mock: MockConfig {
                ttft_ms: 1500,
                ..MockConfig::default()
            },
            ..StackOptions::default()
        },
    )
    .await;
    let answers = futures::future::join_all(
        (0..100).map(|_| complete(&stack, "the question everybody asks")),
    )
    .await;
    assert_eq!(stack.mock.stats().requests, 1, "one provider call in all");
    let first = &answers[0].1;
    assert!(answers.iter().all(|(_, content)| content == first));
    let hits = answers.iter().filter(|(cache, _)| cache == "hit").count();
    assert_eq!(hits, 99);
    // Both workers answered some: the call was shared across processes.
    assert!(finished_by(&stack, "worker-0").await > 0);
    assert!(finished_by(&stack, "worker-1").await > 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_a_worker_that_dies_mid_call_blocks_no_one_for_long() {
    let mut stack = Stack::start(
        "cache_dead_holder",
        StackOptions {
            workers: 1,
            worker_concurrency: 1,
            mock: MockConfig {
                ttft_ms: 60_000,
                ..MockConfig::default()
            },
            ..StackOptions::default()
        },
    )
    .await;
    // worker-0 takes the first request and hangs on the provider, holding the marker.
    let first = {
        let client = stack.client.clone();
        tokio::spawn(async move {
            client
                .request(Method::POST, "/v1/chat/completions")
                .json(&deterministic("a slow question"))
                .timeout(Duration::from_secs(120))
                .send()
                .await
        })
    };
    stack
        .wait_until(
            "worker-0 calls the provider",
            Duration::from_secs(30),
            || async { stack.mock.stats().requests >= 1 },
        )
        .await;
    // A second worker's identical request waits for worker-0's call.
    stack.start_worker("worker-1", &[]).await;
    let second = {
        let client = stack.client.clone();
        tokio::spawn(async move {
            client
                .request(Method::POST, "/v1/chat/completions")
                .json(&deterministic("a slow question"))
                .timeout(Duration::from_secs(120))
                .send()
                .await
        })
    };
    stack
        .wait_until(
            "worker-1 holds the second job",
            Duration::from_secs(30),
            || async { stack.running_on("worker-1").await >= 1 },
        )
        .await;
    let mut fast = stack.mock.config();
    fast.ttft_ms = 0;
    stack.mock.set_config(fast);
    stack.workers[0].sigkill().await;
    // The marker expires; worker-1 calls the provider itself and answers.
    let answered = tokio::time::timeout(Duration::from_secs(45), second)
        .await
        .expect("the waiter was answered once the dead holder's marker expired")
        .unwrap()
        .unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(answered.headers()["x-chatq-cache"], "miss");
    assert_eq!(stack.mock.stats().requests, 2);
    first.abort();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_the_shared_tier_survives_a_worker_restart() {
    let mut stack = Stack::start("cache_restart", StackOptions::default()).await;
    let (cache, content) = complete(&stack, "remember me").await;
    assert_eq!(cache, "miss");
    assert_eq!(stack.mock.stats().requests, 1);

    stack.workers[0].sigterm().await;
    assert!(
        stack.workers[0]
            .wait_exit(Duration::from_secs(20))
            .await
            .is_some()
    );
    stack.start_worker("worker-1", &[]).await;
    let again = complete(&stack, "remember me").await;
    assert_eq!(again, ("hit".to_owned(), content));
    assert_eq!(
        stack.mock.stats().requests,
        1,
        "the restarted worker asked no one"
    );
    stack.stop().await;
}
