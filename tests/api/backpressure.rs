//! Back-pressure at the door (queue full, per-key limits) and what operators see.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestOptions, assert_error, spawn_app_with};

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_records_nothing() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.nats.queue_max_jobs = 3),
        ..TestOptions::default()
    })
    .await;
    let mut conversations = Vec::new();
    for _ in 0..4 {
        conversations.push(
            app.create_conversation(json!({})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let send_keyed = || {
        app.request(
            Method::POST,
            &format!("/v1/conversations/{}/messages", conversations[0]),
        )
        .header("Idempotency-Key", "fits-0")
        .json(&json!({ "content": "fits" }))
        .send()
    };
    let keyed = send_keyed().await.unwrap();
    assert_eq!(keyed.status(), StatusCode::ACCEPTED);
    let keyed: Value = keyed.json().await.unwrap();
    for conversation in &conversations[1..3] {
        app.send(conversation, "fits").await;
    }
    let before = app.row_counts().await;
    let response = app
        .request(
            Method::POST,
            &format!("/v1/conversations/{}/messages", conversations[3]),
        )
        .json(&json!({ "content": "does not fit" }))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let error = assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded_error",
    )
    .await;
    assert_eq!(error["code"], "overloaded");
    assert_eq!(
        app.row_counts().await,
        before,
        "the refused message and job were taken back"
    );
    assert!(app.history(&conversations[3]).await.is_empty());

    // Chat completions are refused the same way.
    let response = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&json!({ "model": "mock-model", "messages": [{"role": "user", "content": "also full"}] }))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded_error",
    )
    .await;
    assert_eq!(app.row_counts().await, before);

    // While the queue is full, a retry of an accepted send is still answered with its job.
    let retried = send_keyed().await.unwrap();
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["job"]["id"], keyed["job"]["id"]);
    assert_eq!(app.row_counts().await, before);
    app.stop().await;
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            s.limits.key_rate_limit_per_sec = Some(1);
            s.limits.key_rate_limit_burst = 5;
        }),
        ..TestOptions::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = app
            .request(Method::GET, "/v1/conversations")
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            let error =
                assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limit_error").await;
            assert_eq!(error["code"], "rate_limit_exceeded");
        }
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 5, "the burst, then 429s: {statuses:?}");
    // Another key has its own budget; probes are never limited.
    let other = app.other_tenant_key("tenant-b").await;
    let response = app
        .request_as(&other, Method::GET, "/v1/conversations")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn operators_see_the_queue_per_lane_and_only_with_an_admin_key() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    for _ in 0..3 {
        let conversation = app.create_conversation(json!({})).await;
        app.send(conversation["id"].as_str().unwrap(), "waiting")
            .await;
    }
    let response = app
        .request(Method::GET, "/v1/admin/queue")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::FORBIDDEN, "permission_error").await;

    let admin = app.admin_key().await;
    let queue: Value = app
        .request_as(&admin, Method::GET, "/v1/admin/queue")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let interactive = &queue["lanes"]["interactive"];
    assert_eq!(interactive["pending"], 3, "{queue}");
    assert_eq!(interactive["consumer_lag"], 3);
    assert_eq!(interactive["in_flight"], 0);
    assert_eq!(interactive["queued_in_postgres"], 3);
    assert!(
        interactive["oldest_age_secs"]
            .as_f64()
            .is_some_and(|age| age >= 0.0)
    );
    assert_eq!(queue["lanes"]["batch"]["pending"], 0);
    assert_eq!(queue["lanes"]["batch"]["oldest_age_secs"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn metrics_are_exported_for_prometheus() {
    let app = spawn_app_with(TestOptions::default()).await;
    let conversation = app.create_conversation(json!({})).await;
    let job = app
        .send(conversation["id"].as_str().unwrap(), "hello")
        .await;
    app.wait_for_job(job["job"]["id"].as_str().unwrap()).await;
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    for name in [
        "chatq_http_requests_total",
        "chatq_http_request_duration_seconds_bucket",
        "chatq_jobs_finished_total",
        "chatq_job_queue_wait_seconds_bucket",
        "chatq_provider_duration_seconds_bucket",
        "chatq_provider_ttft_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        text.contains("route=\"/v1/conversations/{id}/messages\""),
        "requests are counted by route template, not raw path"
    );
    app.stop().await;
}
