//! Jobs as clients see them: waiting with `Prefer: wait=N` or `?wait=N`, the job object, and a job
//! the provider refuses.

use std::time::{Duration, Instant};

use chatq_mock_llm::{Fault, MockConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestOptions, id_of, messages_path, spawn_app, spawn_app_with};

#[tokio::test]
async fn prefer_wait_answers_200_with_the_finished_job() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let response = app
        .request(Method::POST, &messages_path(&id))
        .header("Prefer", "wait=20")
        .json(&json!({ "content": "wait for it" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["preference-applied"], "wait=20");
    let body: Value = response.json().await.unwrap();
    let job = &body["job"];
    assert_eq!(job["status"], "succeeded", "{body}");
    assert_eq!(body["message"]["content"], "wait for it");
    assert_eq!(body["message"]["seq"], 1);

    let history = app.history(&id).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["id"], job["reply"]["message_id"]);
    assert_eq!(history[1]["content"], job["reply"]["content"]);

    // A reply slower than the wait gets the usual 202 once the wait is over.
    app.mock.set_config(MockConfig {
        ttft_ms: 4000,
        ..MockConfig::default()
    });
    let started = Instant::now();
    let response = app
        .request(Method::POST, &messages_path(&id))
        .header("Prefer", "wait=1")
        .json(&json!({ "content": "too slow" }))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().get("preference-applied").is_none());
    assert!(response.headers().get("location").is_some());
    let body: Value = response.json().await.unwrap();
    assert!(
        matches!(body["job"]["status"].as_str(), Some("queued" | "running")),
        "{body}"
    );
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(3500),
        "waited {elapsed:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn without_prefer_the_answer_is_202_with_the_job_location() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let response = app
        .post_json(&messages_path(&id), &json!({ "content": "later" }))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().get("preference-applied").is_none());
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/v1/jobs/{}", id_of(&body["job"])));
    assert_eq!(body["job"]["object"], "job");
    assert_eq!(body["job"]["status"], "queued");
    assert_eq!(body["job"]["conversation_id"], id.as_str());
    assert_eq!(body["message"]["role"], "user");
    assert_eq!(body["message"]["job_id"], body["job"]["id"]);

    // The location is where the job is.
    let job = app.get_ok(&format!("{location}?wait=20")).await;
    assert_eq!(job["id"], body["job"]["id"]);
    assert_eq!(job["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_the_job_finishes() {
    const TTFT_MS: u64 = 1500;
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: TTFT_MS,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let accepted = app.send(&id, "how long?").await;
    let job_path = format!("/v1/jobs/{}", id_of(&accepted["job"]));

    let pending = app.get_ok(&job_path).await;
    assert!(
        matches!(pending["status"].as_str(), Some("queued" | "running")),
        "{pending}"
    );
    let started = Instant::now();
    let job = app.get_ok(&format!("{job_path}?wait=20")).await;
    let elapsed = started.elapsed();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        elapsed < Duration::from_secs(6),
        "the long poll took {elapsed:?}"
    );

    // The job object, complete.
    assert_eq!(job["object"], "job");
    assert_eq!(job["lane"], "interactive");
    assert_eq!(job["model"], "mock-model");
    assert_eq!(job["conversation_id"], id.as_str());
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["error"], Value::Null);
    let number = |field: &str| {
        job[field]
            .as_i64()
            .unwrap_or_else(|| panic!("{field} is not set: {job}"))
    };
    assert!(number("queued_ms") >= 0);
    assert!(number("ttft_ms") >= TTFT_MS as i64, "{job}");
    assert!(number("upstream_ms") >= number("ttft_ms"), "{job}");
    assert!(number("created_at") <= number("started_at"));
    assert!(number("started_at") <= number("finished_at"));
    let reply = &job["reply"];
    assert_eq!(reply["cached"], false);
    let history = app.history(&id).await;
    assert_eq!(reply["message_id"], history[1]["id"]);
    assert_eq!(reply["content"], history[1]["content"]);
    let usage = &reply["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(completion, u64::from(MockConfig::default().tokens));
    assert!(prompt > 0);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
    app.stop().await;
}

#[tokio::test]
async fn a_request_the_provider_rejects_fails_at_once_with_a_clear_error() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            fault: Some(Fault::Status { status: 400 }),
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let job = app.turn(&id, "this cannot work").await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["reply"], Value::Null);
    assert_eq!(job["error"]["type"], "provider_rejected", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("400"),
        "the error says what happened: {message}"
    );
    assert_eq!(app.mock.stats().requests, 1, "not retried");

    // The question stays, without an answer, and the conversation is free for the next one.
    let history = app.history(&id).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["role"], "user");
    app.mock.set_config(MockConfig::default());
    let next = app.turn(&id, "try again").await;
    assert_eq!(next["status"], "succeeded");
    app.stop().await;
}
