//! A worker killed in the middle of a batch: every line still answered exactly once.

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
    let ids: Vec<String> = (0..LINES).map(|i| format!("line-{i}")).collect();
    let lines: Vec<Value> = ids.iter().map(|id| request_line(id)).collect();
    let (content_type, form) = upload_form("batch", &jsonl(&lines));
    let file: Value = stack
        .client
        .request(Method::POST, "/v1/files")
        .header("content-type", content_type)
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch: Value = stack
        .client
        .request(Method::POST, "/v1/batches")
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    stack.workers[0].sigkill().await;
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

    // Polled: the batch's status is what a client watches.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let path = format!("/v1/batches/{batch_id}");
    let batch = loop {
        let (_, batch) = stack.client.once(Method::GET, &path).await;
        if matches!(
            batch["status"].as_str(),
            Some("completed" | "failed" | "expired" | "cancelled")
        ) {
            break batch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch did not end: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
