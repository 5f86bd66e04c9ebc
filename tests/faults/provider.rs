//! The provider failing: storms of 429 and 500, `Retry-After`, errors that can never succeed,
//! attempts running out (dead letters), and replies that are not what they claim to be.

use std::time::{Duration, Instant};

use chatq_mock_llm::{Fault, MockConfig};
use reqwest::{Method, StatusCode};

use crate::harness::{Stack, StackOptions};
use crate::ledger::settle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_error_storms_back_off_and_recover() {
    const JOBS: usize = 300;
    let healthy = MockConfig {
        ttft_ms: 50,
        tokens: 4,
        token_delay_ms: 20,
        ..MockConfig::default()
    };
    let stack = Stack::start(
        "provider_storm",
        StackOptions {
            workers: 2,
            worker_concurrency: 16,
            mock: MockConfig {
                failure_rate: 0.3,
                rate_limit_rate: 0.4,
                retry_after_secs: Some(1),
                ..healthy.clone()
            },
            settings: vec![("CHATQ_JOB_MAX_ATTEMPTS", "20".into())],
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let client = stack.client.clone();
    let load = tokio::spawn(async move { client.send_to_each(&conversations, 32).await });
    stack
        .wait_until(
            "the storm has hit many calls",
            // Workers slow down politely on 429s, so the storm takes a while to hit this many.
            Duration::from_secs(120),
            || async {
                let stats = stack.mock.stats();
                stats.rate_limited + stats.failed >= 100
            },
        )
        .await;
    stack.mock.set_config(healthy);
    let healed_at = Instant::now();
    let stats = stack.mock.stats();
    let faults = stats.rate_limited + stats.failed;

    let accepted = load.await.unwrap();
    let report = settle(
        &stack,
        &accepted,
        faults,
        healed_at,
        Duration::from_secs(90),
    )
    .await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    // Every call was an attempt Postgres counted: retries are bounded by the attempt limit.
    let attempts: i64 = sqlx::query_scalar("SELECT sum(attempts)::int8 FROM jobs")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(attempts as u64, report.provider_calls, "{report:#?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let stack = Stack::start(
        "retry_after",
        StackOptions {
            mock: MockConfig {
                fault: Some(Fault::Status { status: 429 }),
                retry_after_secs: Some(2),
                ..MockConfig::default()
            },
            ..StackOptions::default()
        },
    )
    .await;
    let conversation = stack.client.create_conversations(1).await.remove(0);
    let accepted = stack.client.send(&conversation, "hello").await;
    stack
        .wait_until(
            "the provider refused once",
            Duration::from_secs(30),
            || async { stack.mock.stats().requests >= 1 },
        )
        .await;
    stack.mock.set_config(MockConfig::default());
    let job = stack
        .client
        .wait_for_job(&accepted.job_id, Duration::from_secs(30))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let arrivals = stack.mock.stats().arrivals_ms;
    assert_eq!(arrivals.len(), 2, "{arrivals:?}");
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= 1900,
        "retried after {waited} ms, not after Retry-After: 2"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_become_dead_letters_that_an_operator_can_retry() {
    let stack = Stack::start(
        "dead_letters",
        StackOptions {
            mock: MockConfig {
                fault: Some(Fault::Status { status: 500 }),
                ..MockConfig::default()
            },
            settings: vec![("CHATQ_JOB_MAX_ATTEMPTS", "2".into())],
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(2).await;

    // A server error is retried, until the attempts run out.
    let exhausted = stack.client.send(&conversations[0], "one").await;
    let job = stack
        .client
        .wait_for_job(&exhausted.job_id, Duration::from_secs(30))
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(job["error"]["type"], "provider_error", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("HTTP 500") && message.contains("gave up after 2 attempts"),
        "{job}"
    );

    // A rejected request can never succeed: it fails at once.
    stack.mock.set_config(MockConfig {
        fault: Some(Fault::Status { status: 400 }),
        ..MockConfig::default()
    });
    let rejected = stack.client.send(&conversations[1], "two").await;
    let job = stack
        .client
        .wait_for_job(&rejected.job_id, Duration::from_secs(30))
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(job["error"]["type"], "provider_rejected", "{job}");
    assert_eq!(stack.mock.stats().requests, 3);

    // Both left the work queue for the dead-letter stream.
    stack
        .wait_until(
            "the dead letters are kept",
            Duration::from_secs(10),
            || async { stack.stream_messages(&stack.dead_letter_stream()).await == Some(2) },
        )
        .await;
    assert_eq!(stack.stream_messages(&stack.jobs_stream()).await, Some(0));

    // Operators list them, most recent failure first.
    let admin = stack.client.with_key(&stack.admin_key);
    let (status, list) = admin.once(Method::GET, "/v1/admin/dead-letters").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{list}");
    assert_eq!(data[0]["job_id"], rejected.job_id.as_str(), "{list}");
    assert_eq!(data[1]["job_id"], exhausted.job_id.as_str(), "{list}");
    assert_eq!(data[1]["lane"], "interactive");
    assert_eq!(data[1]["attempts"], 2);
    assert_eq!(data[1]["error"]["type"], "provider_error");
    assert!(data[1]["failed_at"].as_i64().is_some(), "{list}");
    let (_, page) = admin
        .once(Method::GET, "/v1/admin/dead-letters?limit=1")
        .await;
    assert_eq!(page["has_more"], true, "{page}");
    let (_, next) = admin
        .once(
            Method::GET,
            &format!("/v1/admin/dead-letters?limit=1&after={}", rejected.job_id),
        )
        .await;
    assert_eq!(
        next["data"][0]["job_id"],
        exhausted.job_id.as_str(),
        "{next}"
    );
    let (status, _) = stack
        .client
        .once(Method::GET, "/v1/admin/dead-letters")
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a tenant key sees no dead letters"
    );

    // Retried once the provider is healthy again: attempts start over, and it succeeds.
    stack.mock.set_config(MockConfig::default());
    let retry = format!("/v1/admin/dead-letters/{}/retry", exhausted.job_id);
    let (status, job) = admin.once(Method::POST, &retry).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["attempts"], 0, "{job}");
    let job = stack
        .client
        .wait_for_job(&exhausted.job_id, Duration::from_secs(30))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    let (status, body) = admin.once(Method::POST, &retry).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "only failed jobs are retried: {body}"
    );
    let (status, _) = stack
        .client
        .once(
            Method::POST,
            &format!("/v1/admin/dead-letters/{}/retry", rejected.job_id),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_provider_gives_clear_job_errors() {
    const LIMIT: usize = 64 << 10;
    let mut stack = Stack::start(
        "untrusted_provider",
        StackOptions {
            settings: vec![
                ("CHATQ_JOB_MAX_ATTEMPTS", "1".into()),
                ("CHATQ_PROVIDER_IDLE_TIMEOUT_SECS", "2".into()),
                ("CHATQ_PROVIDER_MAX_RESPONSE_BYTES", LIMIT.to_string()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    let cases = [
        (Fault::Hang, "provider_timeout", "did not answer in time"),
        (
            Fault::StallAfter { after_tokens: 2 },
            "provider_timeout",
            "did not answer in time",
        ),
        (
            Fault::TruncateAfter { after_tokens: 2 },
            "provider_malformed_reply",
            "ended before it was complete",
        ),
        (
            Fault::MalformedAfter { after_tokens: 2 },
            "provider_malformed_reply",
            "malformed reply",
        ),
        (Fault::Garbage, "provider_malformed_reply", "malformed"),
        (
            Fault::Oversized { bytes: 16 * LIMIT },
            "provider_reply_too_large",
            "larger than the 65536-byte limit",
        ),
    ];
    let conversations = stack.client.create_conversations(cases.len()).await;
    for ((fault, kind, words), conversation) in cases.into_iter().zip(&conversations) {
        stack.mock.set_config(MockConfig {
            fault: Some(fault.clone()),
            ..MockConfig::default()
        });
        let accepted = stack.client.send(conversation, "are you there").await;
        let job = stack
            .client
            .wait_for_job(&accepted.job_id, Duration::from_secs(30))
            .await;
        assert_eq!(job["status"], "failed", "{fault:?}: {job}");
        assert_eq!(job["error"]["type"], kind, "{fault:?}: {job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{fault:?}: {job}");
        assert!(
            stack.workers[0].is_running(),
            "{fault:?} crashed the worker"
        );
    }
    let rss_mib = stack.workers[0].rss_kib().unwrap() / 1024;
    assert!(
        rss_mib < 150,
        "the worker holds {rss_mib} MiB after an oversized reply"
    );
    stack.stop().await;
}
