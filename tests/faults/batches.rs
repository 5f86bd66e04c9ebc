//! A worker killed in the middle of a batch, and an ingress killed while validating one: every
//! line still answered exactly once.

use std::collections::HashMap;
use std::time::Duration;

use chatq_mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Stack, StackOptions};

#[path = "../support/batch_files.rs"]
mod batch_files;

use batch_files::{custom_id_asked, jsonl, request_line, upload_form};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_leaves_every_line_answered_once() {
    const LINES: usize = 300;
    let mut stack = Stack::start(
        "batch_worker_sigkill",
        StackOptions {
            workers: 2,
            worker_concurrency: 16,
            mock: MockConfig {
                ttft_ms: 200,
                tokens: 8,
                token_delay_ms: 40,
                ..MockConfig::default()
            },
            ..StackOptions::default()
        },
    )
    .await;
    let file = upload_lines(&stack, LINES).await;
    let batch = create_batch(&stack, &file).await;
    let batch_id = batch["id"].as_str().unwrap().to_owned();

    stack
        .wait_until(
            "worker-0 is in the middle of batch lines",
            Duration::from_secs(60),
            || async {
                stack.running_on("worker-0").await >= 8
                    && stack.count_status("succeeded").await >= 30
            },
        )
        .await;
    stack.kill_worker(0).await;
    let held: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE status = 'running' AND claimed_by LIKE 'worker-0-%'",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert!(
        !held.is_empty(),
        "the worker held no line when it was killed"
    );

    let batch = wait_for_end(&stack, &batch_id).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let counts = &batch["request_counts"];
    assert_eq!(
        (
            counts["total"].as_i64(),
            counts["completed"].as_i64(),
            counts["failed"].as_i64()
        ),
        (Some(LINES as i64), Some(LINES as i64), Some(0)),
        "{batch}"
    );
    let answered = answered_lines(&stack, &batch).await;
    assert_eq!(answered.len(), LINES, "every line is in the output");
    assert!(
        answered.values().all(|n| *n == 1),
        "no line is answered twice"
    );
    // The provider was asked again only for what the dead worker held, once each.
    let mut calls: HashMap<String, usize> = HashMap::new();
    for request in stack.mock.requests() {
        *calls.entry(custom_id_asked(&request.body)).or_insert(0) += 1;
    }
    let asked_twice = calls.values().filter(|n| **n > 1).count();
    assert!(calls.values().all(|n| *n <= 2), "{calls:?}");
    assert!(
        asked_twice <= held.len(),
        "only lines the dead worker held ran again"
    );
    let rerun: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'succeeded' AND attempts = 2",
    )
    .bind(&held)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(
        rerun,
        held.len() as i64,
        "each line the dead worker held ran again, once"
    );
    stack.stop().await;
}

/// Uploads a batch file of `count` request lines (`line-0`, `line-1`, …); returns the file.
async fn upload_lines(stack: &Stack, count: usize) -> Value {
    let lines: Vec<Value> = (0..count)
        .map(|i| request_line(&format!("line-{i}")))
        .collect();
    let (content_type, form) = upload_form("batch", &jsonl(&lines));
    stack
        .client
        .request(Method::POST, "/v1/files")
        .header("content-type", content_type)
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Creates a batch of `file` with a 24-hour window; returns the batch as answered.
async fn create_batch(stack: &Stack, file: &Value) -> Value {
    stack
        .client
        .request(Method::POST, "/v1/batches")
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls the batch, as a client would, until it has ended.
async fn wait_for_end(stack: &Stack, batch_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let path = format!("/v1/batches/{batch_id}");
    loop {
        let (_, batch) = stack.client.once(Method::GET, &path).await;
        if matches!(
            batch["status"].as_str(),
            Some("completed" | "failed" | "expired" | "cancelled")
        ) {
            return batch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch did not end: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many times each custom id is in the batch's output file (all answered 200).
async fn answered_lines(stack: &Stack, batch: &Value) -> HashMap<String, usize> {
    let output = stack
        .client
        .request(
            Method::GET,
            &format!(
                "/v1/files/{}/content",
                batch["output_file_id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut answered: HashMap<String, usize> = HashMap::new();
    for line in output.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        *answered
            .entry(line["custom_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_ingress_dies_while_validating_it_is_validated_by_the_next() {
    // More than one page of lines, so the crash comes with lines written and not committed.
    const LINES: usize = 1500;
    let mut stack = Stack::start(
        "batch_validation_crash",
        StackOptions {
            workers: 1,
            worker_concurrency: 32,
            ..StackOptions::default()
        },
    )
    .await;
    let file = upload_lines(&stack, LINES).await;
    // Replace the ingress by one that dies in the middle of its first validation.
    stack.ingress().sigkill().await;
    stack
        .start_ingress(&[("CHATQ_FAULT_EXIT_MID_VALIDATION", "1")])
        .await;
    let batch = create_batch(&stack, &file).await;
    assert_eq!(batch["status"], "validating", "{batch}");
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let exit = stack
        .ingress()
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("the ingress dies mid-validation");
    assert_eq!(exit.code(), Some(chatq_common::fault::EXIT_CODE));
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "nothing of the cut validation is kept");

    stack.start_ingress(&[]).await;
    let batch = wait_for_end(&stack, &batch_id).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["model"], "mock-model", "{batch}");
    let counts = &batch["request_counts"];
    assert_eq!(
        (counts["total"].as_i64(), counts["completed"].as_i64()),
        (Some(LINES as i64), Some(LINES as i64)),
        "{batch}"
    );
    let answered = answered_lines(&stack, &batch).await;
    assert_eq!(answered.len(), LINES, "every line is in the output");
    assert!(
        answered.values().all(|n| *n == 1),
        "no line is answered twice"
    );
    let mut calls: HashMap<String, usize> = HashMap::new();
    for request in stack.mock.requests() {
        *calls.entry(custom_id_asked(&request.body)).or_insert(0) += 1;
    }
    assert_eq!(calls.len(), LINES);
    assert!(calls.values().all(|n| *n == 1), "each line ran once");
    stack.stop().await;
}
