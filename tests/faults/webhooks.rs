//! Webhook deliveries across a worker's death: the outbox row commits with the result, so a
//! worker that dies after its commit, before sending anything, loses no delivery.

#[path = "../support/webhook_receiver.rs"]
mod webhook_receiver;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use self::webhook_receiver::{Answer, WebhookReceiver};
use crate::harness::{Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dead_after_its_commit_still_has_the_webhook_delivered() {
    let receiver = WebhookReceiver::start(Answer::FailFirst(0)).await;
    let mut stack = Stack::start(
        "webhook_after_commit",
        StackOptions {
            workers: 0,
            settings: vec![
                ("CHATQ_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true".into()),
                ("CHATQ_WEBHOOK_RETRY_BASE_MS", "100".into()),
                ("CHATQ_WEBHOOK_POLL_INTERVAL_MS", "50".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    let response = stack
        .client
        .request(Method::POST, "/v1/webhooks")
        .json(&json!({"url": receiver.url(), "events": ["job.succeeded"]}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let created: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");

    // This worker exits the moment its first result commits; it looks for deliveries only once,
    // at start, so it cannot have sent this one before it died.
    stack
        .start_worker(
            "doomed",
            &[
                ("CHATQ_FAULT_EXIT_AFTER_COMMIT", "1"),
                ("CHATQ_WEBHOOK_POLL_INTERVAL_MS", "600000"),
            ],
        )
        .await;
    let conversation = stack.client.create_conversations(1).await.remove(0);
    let accepted = stack.client.send(&conversation, "hello").await;
    let exit = stack.workers[0]
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the worker crashes after its first commit");
    assert_eq!(exit.code(), Some(chatq_common::fault::EXIT_CODE));
    let owed: Vec<(String, i32)> = sqlx::query_as("SELECT status, attempts FROM webhook_outbox")
        .fetch_all(&stack.pool)
        .await
        .unwrap();
    assert_eq!(
        owed,
        [("pending".to_owned(), 0)],
        "committed with the result"
    );
    assert!(receiver.received().is_empty());

    stack.start_worker("rescuer", &[]).await;
    let received = receiver
        .wait_until("the delivery", Duration::from_secs(60), |r| !r.is_empty())
        .await;
    assert_eq!(received.len(), 1, "{received:#?}");
    let body = received[0].json();
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["data"]["id"], accepted.job_id.as_str(), "{body}");
    stack.stop().await;
}
