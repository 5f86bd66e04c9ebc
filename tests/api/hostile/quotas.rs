//! Per-tenant quotas: a tenant over one gets 429 with `Retry-After` naming it, and nothing is
//! written (a dead letter sent back to the queue counts as a new job); another tenant is not
//! affected; `chatq tenants set-quota` raises and lowers them.

use std::process::Stdio;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use chatq_common::db::jobs::record;
use chatq_common::ids::JobId;

use crate::helpers::{TestApp, TestOptions, assert_error, completion_job, spawn_app_with};

/// Checks a 429 for `quota` and returns its error body.
async fn assert_over_quota(response: reqwest::Response, quota: &str) -> Value {
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("a 429 for a quota says when to retry")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let error = assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limit_error").await;
    assert_eq!(error["code"], "quota_exceeded");
    assert_eq!(error["param"], quota);
    assert!(
        error["message"].as_str().unwrap().contains(quota),
        "the message names the quota: {error}"
    );
    error
}

async fn send_as(app: &TestApp, key: &str, conversation: &str) -> reqwest::Response {
    app.request_as(
        key,
        Method::POST,
        &format!("/v1/conversations/{conversation}/messages"),
    )
    .json(&json!({ "content": "hello" }))
    .send()
    .await
    .unwrap()
}

async fn conversation_as(app: &TestApp, key: &str) -> String {
    let response = app
        .request_as(key, Method::POST, "/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `chatq tenants set-quota TENANT ARGS…` as an operator runs it, against the test's database and
/// with its queued-jobs setting (the command shows the quotas that apply).
async fn set_quota(app: &TestApp, tenant: &str, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatq"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CHATQ_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(["tenants", "set-quota", tenant])
        .args(args)
        .env(
            "CHATQ_DATABASE_URL",
            crate::helpers::database_url(&app.database),
        )
        .env(
            "CHATQ_TENANT_MAX_QUEUED_JOBS",
            app.settings
                .limits
                .tenant_max_queued_jobs
                .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
        )
        .env("CHATQ_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("chatq runs");
    assert!(
        output.status.success(),
        "chatq tenants set-quota failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn queued_jobs_over_the_quota_get_429_and_write_nothing() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.limits.tenant_max_queued_jobs = Some(2)),
        ..TestOptions::default()
    })
    .await;
    let mut conversations = Vec::new();
    for _ in 0..3 {
        conversations.push(conversation_as(&app, &app.key).await);
    }
    for conversation in &conversations[..2] {
        assert_eq!(
            send_as(&app, &app.key, conversation).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let before = app.row_counts().await;
    assert_over_quota(
        send_as(&app, &app.key, &conversations[2]).await,
        "queued_jobs",
    )
    .await;
    let completion = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&json!({ "model": "mock-model", "messages": [{"role": "user", "content": "hi"}] }))
        .send()
        .await
        .unwrap();
    assert_over_quota(completion, "queued_jobs").await;
    let response = app
        .request(Method::POST, "/v1/responses")
        .json(&json!({ "model": "mock-model", "input": "hi", "background": true }))
        .send()
        .await
        .unwrap();
    assert_over_quota(response, "queued_jobs").await;
    assert_eq!(
        app.row_counts().await,
        before,
        "refused requests wrote nothing"
    );
    assert!(app.history(&conversations[2]).await.is_empty());

    // Another tenant has a quota of its own.
    let other = app.other_tenant_key("tenant-b").await;
    let theirs = conversation_as(&app, &other).await;
    assert_eq!(
        send_as(&app, &other, &theirs).await.status(),
        StatusCode::ACCEPTED
    );
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_override_raises_and_lowers_its_quota() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.limits.tenant_max_queued_jobs = Some(1)),
        ..TestOptions::default()
    })
    .await;
    let mut conversations = Vec::new();
    for _ in 0..4 {
        conversations.push(conversation_as(&app, &app.key).await);
    }
    assert_eq!(
        send_as(&app, &app.key, &conversations[0]).await.status(),
        StatusCode::ACCEPTED
    );
    assert_over_quota(
        send_as(&app, &app.key, &conversations[1]).await,
        "queued_jobs",
    )
    .await;

    // Raised: two more fit, then the override holds.
    let shown = set_quota(&app, "tenant-a", &["--queued-jobs", "3"]).await;
    assert!(
        shown.contains("queued_jobs\t3\ttenant"),
        "the command shows the quotas now: {shown}"
    );
    for conversation in &conversations[1..3] {
        assert_eq!(
            send_as(&app, &app.key, conversation).await.status(),
            StatusCode::ACCEPTED
        );
    }
    assert_over_quota(
        send_as(&app, &app.key, &conversations[3]).await,
        "queued_jobs",
    )
    .await;

    // Lowered to what the tenant holds: nothing more until it holds less.
    set_quota(&app, "tenant-a", &["--conversations", "4"]).await;
    let response = app
        .request(Method::POST, "/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_over_quota(response, "conversations").await;

    // Back to the settings.
    let shown = set_quota(
        &app,
        "tenant-a",
        &["--queued-jobs", "default", "--conversations", "unlimited"],
    )
    .await;
    assert!(shown.contains("queued_jobs\t1\tsetting"), "{shown}");
    assert!(
        shown.contains("conversations\tunlimited\ttenant"),
        "{shown}"
    );
    assert_over_quota(
        send_as(&app, &app.key, &conversations[3]).await,
        "queued_jobs",
    )
    .await;
    conversation_as(&app, &app.key).await;
    app.stop().await;
}

#[tokio::test]
async fn conversations_over_the_quota_get_429_and_write_nothing() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.limits.tenant_max_conversations = Some(2)),
        ..TestOptions::default()
    })
    .await;
    let first = conversation_as(&app, &app.key).await;
    conversation_as(&app, &app.key).await;
    let before = app.row_counts().await;
    let response = app
        .request(Method::POST, "/v1/conversations")
        .json(&json!({ "title": "one too many" }))
        .send()
        .await
        .unwrap();
    assert_over_quota(response, "conversations").await;
    assert_eq!(app.row_counts().await, before);

    // Deleting one makes room.
    let deleted = app
        .request(Method::DELETE, &format!("/v1/conversations/{first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    conversation_as(&app, &app.key).await;
    app.stop().await;
}

#[tokio::test]
async fn event_streams_over_the_quota_get_429_and_write_nothing() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| {
            s.limits.tenant_max_event_streams = Some(1);
            // A closed stream is noticed at its next write.
            s.ingress.sse_keepalive_secs = 1;
        }),
        ..TestOptions::default()
    })
    .await;
    let conversation = conversation_as(&app, &app.key).await;
    let accepted: Value = send_as(&app, &app.key, &conversation)
        .await
        .json()
        .await
        .unwrap();
    let job = accepted["job"]["id"].as_str().unwrap().to_owned();
    let events = format!("/v1/jobs/{job}/events");
    // The first stream stays open (no worker runs the job).
    let open = app.request(Method::GET, &events).send().await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);

    assert_over_quota(
        app.request(Method::GET, &events).send().await.unwrap(),
        "event_streams",
    )
    .await;
    let before = app.row_counts().await;
    let streamed = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&json!({
            "model": "mock-model", "stream": true,
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .send()
        .await
        .unwrap();
    assert_over_quota(streamed, "event_streams").await;
    let response = app
        .request(Method::POST, "/v1/responses")
        .json(&json!({ "model": "mock-model", "input": "hi", "stream": true }))
        .send()
        .await
        .unwrap();
    assert_over_quota(response, "event_streams").await;
    assert_eq!(
        app.row_counts().await,
        before,
        "refused streams wrote nothing"
    );

    // Another tenant's streams are its own.
    let other = app.other_tenant_key("tenant-b").await;
    let theirs = conversation_as(&app, &other).await;
    let accepted: Value = send_as(&app, &other, &theirs).await.json().await.unwrap();
    let response = app
        .request_as(
            &other,
            Method::GET,
            &format!(
                "/v1/jobs/{}/events",
                accepted["job"]["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A closed stream gives its place back.
    drop(open);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let again = app.request(Method::GET, &events).send().await.unwrap();
        if again.status() == StatusCode::OK {
            break;
        }
        assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_dead_letter_retried_at_the_queued_quota_gets_429_and_stays_failed() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.limits.tenant_max_queued_jobs = Some(1)),
        ..TestOptions::default()
    })
    .await;
    let admin = app.admin_key().await;
    let tenant = app.tenant("tenant-a").await;

    // A dead letter of the tenant, and a job of the tenant queued: the quota of one is used.
    let dead = completion_job(tenant, "it failed");
    record(&app.pool, std::slice::from_ref(&dead))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET status = 'failed', attempts = 1, finished_at = now(),
                         error_type = 'provider_error', error_message = 'the provider refused'
          WHERE id = $1",
    )
    .bind(dead.id.as_uuid())
    .execute(&app.pool)
    .await
    .unwrap();
    let conversation = conversation_as(&app, &app.key).await;
    let queued: Value = send_as(&app, &app.key, &conversation)
        .await
        .json()
        .await
        .unwrap();
    let retry = format!("/v1/admin/dead-letters/{}/retry", dead.id);
    assert_over_quota(
        app.request_as(&admin, Method::POST, &retry)
            .send()
            .await
            .unwrap(),
        "queued_jobs",
    )
    .await;
    let job = app.wait_for_job(&dead.id.to_string()).await;
    assert_eq!(job["status"], "failed", "the refused retry changed nothing");

    // Once the queued job has left the queue, the retry goes through.
    let queued: JobId = queued["job"]["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = $1")
        .bind(queued.as_uuid())
        .execute(&app.pool)
        .await
        .unwrap();
    let retried = app
        .request_as(&admin, Method::POST, &retry)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["status"], "queued", "{retried}");
    app.stop().await;
}
