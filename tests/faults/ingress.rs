//! An ingress that crashes between recording a job and publishing it, and one that is stopped
//! while requests are in flight.

use std::time::{Duration, Instant};

use chatq_mock_llm::MockConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Stack, StackOptions};
use crate::ledger::settle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_crash_between_recording_and_publishing_loses_nothing() {
    const JOBS: usize = 300;
    const CRASH_ON: usize = 150;
    let mut stack = Stack::start(
        "ingress_crash_before_publish",
        StackOptions {
            workers: 2,
            worker_concurrency: 16,
            mock: MockConfig {
                ttft_ms: 100,
                tokens: 8,
                token_delay_ms: 20,
                ..MockConfig::default()
            },
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    // Replace the ingress by one that crashes on the CRASH_ON-th job it records.
    stack.ingress().sigkill().await;
    stack
        .start_ingress(&[("CHATQ_FAULT_EXIT_BEFORE_PUBLISH", &CRASH_ON.to_string())])
        .await;
    let client = stack.client.clone();
    // Clients whose request died with the ingress retry, with the same idempotency key.
    let load = tokio::spawn(async move { client.send_to_each(&conversations, 16).await });

    let status = stack
        .ingress()
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("the ingress crashes");
    assert_eq!(status.code(), Some(chatq_common::fault::EXIT_CODE));
    let crashed_at = Instant::now();
    // Recorded, and not known to be published: the job the ingress crashed on, and any whose
    // publish note the crash lost. With no ingress running, only the reconciler can queue the
    // first kind.
    let orphans: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE status = 'queued' AND published_at IS NULL")
            .fetch_all(&stack.pool)
            .await
            .unwrap();
    assert!(
        !orphans.is_empty(),
        "no job was left unpublished by the crash"
    );
    stack
        .wait_until(
            "the orphaned jobs ran, with no ingress up",
            Duration::from_secs(30),
            || async {
                let done: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'succeeded'",
                )
                .bind(&orphans)
                .fetch_one(&stack.pool)
                .await
                .unwrap_or(0);
                done == orphans.len() as i64
            },
        )
        .await;
    let republished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE id = ANY($1) AND published_at IS NOT NULL",
    )
    .bind(&orphans)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert!(
        republished >= 1,
        "the reconciler published none of {orphans:?}"
    );

    stack.start_ingress(&[]).await;
    let accepted = load.await.unwrap();
    let report = settle(&stack, &accepted, 1, crashed_at, Duration::from_secs(90)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    // The client of the crashed request got its job back, not a second one.
    assert!(accepted.iter().any(|a| a.replayed), "no send was replayed");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_ingress_finishes_its_requests_first() {
    let mut stack = Stack::start(
        "ingress_sigterm",
        StackOptions {
            mock: MockConfig {
                ttft_ms: 2000,
                tokens: 2,
                ..MockConfig::default()
            },
            ..StackOptions::default()
        },
    )
    .await;
    let conversation = stack.client.create_conversations(1).await.remove(0);
    let client = stack.client.clone();
    // A request that waits for the job to finish: in flight for about two seconds.
    let waiting = tokio::spawn(async move {
        let response = client
            .request(
                Method::POST,
                &format!("/v1/conversations/{conversation}/messages"),
            )
            .header("prefer", "wait=30")
            .json(&json!({ "content": "take your time" }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    });
    stack
        .wait_until("the job runs", Duration::from_secs(30), || async {
            stack.count_status("running").await == 1
        })
        .await;
    stack.ingress().sigterm().await;
    let status = stack
        .ingress()
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the ingress exits once its requests are done");
    assert!(status.success(), "the ingress exited with {status}");
    let (answer, body) = waiting.await.unwrap();
    assert_eq!(answer, StatusCode::OK, "{body}");
    assert_eq!(body["job"]["status"], "succeeded", "{body}");
    // And it no longer accepts anything.
    assert!(
        stack
            .client
            .request(Method::GET, "/healthz")
            .send()
            .await
            .is_err()
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_turn_whose_commit_acknowledgement_was_lost_is_answered_with_its_job() {
    const SENDS: usize = 6;
    let mut stack = Stack::start(
        "ingress_record_ack_lost",
        StackOptions {
            workers: 1,
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(SENDS).await;
    // An ingress that takes the commits of its first batches as failed, as if the database's
    // acknowledgement had been lost after the commit took effect.
    stack.ingress().sigkill().await;
    stack
        .start_ingress(&[("CHATQ_FAULT_LOSE_RECORD_ACK", &SENDS.to_string())])
        .await;
    let mut accepted = Vec::new();
    for conversation in &conversations {
        // Once each, no retry: the first answer is what a client gets.
        let response = stack
            .client
            .request(
                Method::POST,
                &format!("/v1/conversations/{conversation}/messages"),
            )
            .json(&json!({ "content": "hello" }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        accepted.push(crate::harness::client::Accepted {
            job_id: body["job"]["id"].as_str().unwrap().to_owned(),
            replayed: false,
        });
    }
    let report = settle(
        &stack,
        &accepted,
        SENDS as u64,
        Instant::now(),
        Duration::from_secs(30),
    )
    .await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), SENDS, "{report:#?}");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(jobs, SENDS as i64, "one job per send, none recorded twice");
    stack.stop().await;
}
