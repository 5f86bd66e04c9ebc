//! Workers that die, stop, or crash at the worst moment; and calls longer than the ack wait.

use std::time::{Duration, Instant};

use chatq_mock_llm::MockConfig;
use uuid::Uuid;

use crate::harness::{Stack, StackOptions};
use crate::ledger::settle;

/// A job takes about half a second at the mock.
fn half_second_replies() -> MockConfig {
    MockConfig {
        ttft_ms: 200,
        tokens: 8,
        token_delay_ms: 40,
        ..MockConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing() {
    const JOBS: usize = 300;
    let mut stack = Stack::start(
        "worker_sigkill",
        StackOptions {
            workers: 2,
            worker_concurrency: 16,
            mock: half_second_replies(),
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let client = stack.client.clone();
    let load = tokio::spawn(async move { client.send_to_each(&conversations, 32).await });

    stack
        .wait_until(
            "worker-0 is in the middle of jobs",
            Duration::from_secs(60),
            || async {
                stack.running_on("worker-0").await >= 8
                    && stack.count_status("succeeded").await >= 30
            },
        )
        .await;
    stack.kill_worker(0).await;
    let killed_at = Instant::now();
    // What the dead worker held stays claimed until its lease runs out.
    let held: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE status = 'running' AND claimed_by LIKE 'worker-0-%'",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert!(
        !held.is_empty(),
        "the worker held nothing when it was killed"
    );

    let accepted = load.await.unwrap();
    let report = settle(&stack, &accepted, 1, killed_at, Duration::from_secs(90)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    // Each was run again, once, elsewhere.
    let rerun: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs
          WHERE id = ANY($1) AND attempts = 2 AND claimed_by LIKE 'worker-1-%'",
    )
    .bind(&held)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(rerun, held.len() as i64, "{report:#?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_hands_back_what_it_cannot_finish() {
    const JOBS: usize = 200;
    let grace = Duration::from_secs(1);
    let mut stack = Stack::start(
        "sigterm_drain",
        StackOptions {
            workers: 2,
            worker_concurrency: 40,
            // Longer than the grace period: what the worker just started cannot finish in time.
            mock: MockConfig {
                ttft_ms: 2000,
                tokens: 2,
                ..MockConfig::default()
            },
            settings: vec![("CHATQ_SHUTDOWN_GRACE_SECS", grace.as_secs().to_string())],
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let client = stack.client.clone();
    let load = tokio::spawn(async move { client.send_to_each(&conversations, 32).await });

    stack
        .wait_until("worker-0 holds jobs", Duration::from_secs(60), || async {
            stack.running_on("worker-0").await >= 8
        })
        .await;
    stack.workers[0].sigterm().await;
    let stopped_at = Instant::now();
    let status = stack.workers[0]
        .wait_exit(grace + Duration::from_secs(4))
        .await
        .expect("the worker exits within its grace period");
    let stopped_in = stopped_at.elapsed();
    assert!(status.success(), "the worker exited with {status}");
    assert!(
        stopped_in < grace + Duration::from_secs(3),
        "stopping took {stopped_in:?}"
    );
    // Handed back with the attempt refunded: queued again (0), or already taken by the other
    // worker (1).
    let handed_back: Vec<i32> =
        sqlx::query_scalar("SELECT attempts FROM jobs WHERE error_type = 'handed_back'")
            .fetch_all(&stack.pool)
            .await
            .unwrap();
    assert!(!handed_back.is_empty(), "the worker handed nothing back");
    assert!(handed_back.iter().all(|a| *a <= 1), "{handed_back:?}");

    let accepted = load.await.unwrap();
    let report = settle(&stack, &accepted, 1, stopped_at, Duration::from_secs(90)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_finishes_what_it_holds_within_its_grace_period() {
    const JOBS: usize = 20;
    let mut stack = Stack::start(
        "sigterm_finish",
        StackOptions {
            workers: 1,
            worker_concurrency: 4,
            mock: MockConfig {
                ttft_ms: 1000,
                tokens: 2,
                ..MockConfig::default()
            },
            settings: vec![("CHATQ_SHUTDOWN_GRACE_SECS", "10".into())],
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let accepted = stack.client.send_to_each(&conversations, 8).await;
    stack
        .wait_until("worker-0 holds jobs", Duration::from_secs(30), || async {
            stack.running_on("worker-0").await >= 4
        })
        .await;
    stack.workers[0].sigterm().await;
    let stopped_at = Instant::now();
    let status = stack.workers[0]
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the worker exits within its grace period");
    assert!(status.success(), "the worker exited with {status}");
    // It finished what it held and pulled nothing more.
    assert_eq!(stack.count_status("running").await, 0);
    let finished = stack.count_status("succeeded").await;
    assert!(finished >= 4, "{finished} jobs finished");

    // The rest waits in the queue for the next worker.
    stack.start_worker("worker-1", &[]).await;
    let report = settle(&stack, &accepted, 1, stopped_at, Duration::from_secs(60)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    assert_eq!(
        report.provider_calls, JOBS as u64,
        "a call was repeated: {report:#?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_ack_neither_calls_nor_writes_again() {
    let mut stack = Stack::start(
        "commit_then_crash",
        StackOptions {
            workers: 0,
            ..StackOptions::default()
        },
    )
    .await;
    stack
        .start_worker("doomed", &[("CHATQ_FAULT_EXIT_AFTER_COMMIT", "1")])
        .await;
    let conversation = stack.client.create_conversations(1).await.remove(0);
    let accepted = stack.client.send(&conversation, "hello").await;

    let status = stack.workers[0]
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the worker crashes after its first commit");
    assert_eq!(status.code(), Some(chatq_common::fault::EXIT_CODE));
    let crashed_at = Instant::now();
    // Committed, not acknowledged: the message is still in the queue.
    assert_eq!(stack.count_status("succeeded").await, 1);
    assert_eq!(stack.stream_messages(&stack.jobs_stream()).await, Some(1));

    // Another worker gets the redelivery after the ack wait, finds the job finished, and
    // acknowledges it (the ledger waits for the queue to drain).
    stack.start_worker("rescuer", &[]).await;
    let report = settle(
        &stack,
        std::slice::from_ref(&accepted),
        1,
        crashed_at,
        Duration::from_secs(30),
    )
    .await;
    report.assert_clean();
    assert_eq!(report.provider_calls, 1, "the provider was called again");
    assert_eq!(report.attempts.get(&1), Some(&1), "{report:#?}");
    let history = stack
        .client
        .once(
            reqwest::Method::GET,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .await
        .1;
    assert_eq!(history["data"].as_array().unwrap().len(), 2, "{history}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_acks_keep_a_long_call_on_one_worker() {
    const JOBS: usize = 100;
    let ack_wait = Duration::from_secs(2);
    let stack = Stack::start(
        "long_job",
        StackOptions {
            workers: 2,
            worker_concurrency: 64,
            // About 7 seconds a call: three and a half times the ack wait.
            mock: MockConfig {
                ttft_ms: 2000,
                tokens: 6,
                token_delay_ms: 1000,
                ..MockConfig::default()
            },
            settings: vec![("CHATQ_JOB_ACK_WAIT_SECS", ack_wait.as_secs().to_string())],
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let started = Instant::now();
    let accepted = stack.client.send_to_each(&conversations, 32).await;
    let report = settle(&stack, &accepted, 0, started, Duration::from_secs(60)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    assert_eq!(
        report.provider_calls, JOBS as u64,
        "a call was repeated: {report:#?}"
    );
    assert_eq!(report.attempts.get(&1), Some(&JOBS), "{report:#?}");
    let upstream_ms: i64 = sqlx::query_scalar("SELECT min(upstream_ms)::int8 FROM jobs")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert!(
        upstream_ms > 3 * ack_wait.as_millis() as i64,
        "calls were not long enough to need in-progress acks: {upstream_ms} ms"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_a_job_in_one_pull_call_the_provider_once() {
    const JOBS: usize = 20;
    let mut stack = Stack::start(
        "worker_duplicate_in_one_pull",
        StackOptions {
            workers: 0,
            // Room for every copy in the worker's first pull.
            worker_concurrency: 64,
            mock: half_second_replies(),
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let accepted = stack.client.send_to_each(&conversations, 16).await;
    // A second copy of every job beside the first (as a republish after a suspected loss makes
    // one), so that one pull delivers both copies of each job together.
    for job in &accepted {
        let id: chatq_common::ids::JobId = job.job_id.parse().unwrap();
        let copy = chatq_common::queue::publish_copy(
            &stack.jetstream,
            &chatq_common::topology::Topology::for_namespace(
                &chatq_common::settings::SettingValue::parse_setting(&stack.namespace).unwrap(),
            ),
            id,
            chatq_common::job::Lane::Interactive,
            1,
            None,
        )
        .await
        .unwrap();
        assert!(!copy, "the second copy is stored beside the first");
    }
    assert_eq!(
        stack.stream_messages(&stack.jobs_stream()).await,
        Some(2 * JOBS as u64)
    );
    let started = Instant::now();
    stack.start_worker("worker-0", &[]).await;
    let report = settle(&stack, &accepted, 0, started, Duration::from_secs(60)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    assert_eq!(
        stack.mock.stats().requests,
        JOBS as u64,
        "each job reached the provider once, whichever of its copies won its claim"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_terminal_event_is_never_sent_is_answered_within_seconds() {
    let mut stack = Stack::start(
        "completion_commit_then_crash",
        StackOptions {
            workers: 0,
            ..StackOptions::default()
        },
    )
    .await;
    // The worker commits the reply and dies before it can publish the terminal event.
    stack
        .start_worker("doomed", &[("CHATQ_FAULT_EXIT_AFTER_COMMIT", "1")])
        .await;
    let started = Instant::now();
    let response = stack
        .client
        .request(reqwest::Method::POST, "/v1/chat/completions")
        .json(&serde_json::json!({
            "model": "mock-model",
            "messages": [{"role": "user", "content": "hello"}],
        }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the completion is answered");
    let waited = started.elapsed();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|text| !text.is_empty()),
        "{body}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "the client waited {waited:?} for a reply committed at once"
    );
    crate::ledger::note(
        &stack,
        &format!(
            "completion answered {:.1} s after it was sent, its worker dead before the terminal event",
            waited.as_secs_f64()
        ),
    );
    stack.stop().await;
}
