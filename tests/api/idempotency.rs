//! `Idempotency-Key`: a retried send creates nothing new; the same key for another request is 409.

use chatq_mock_llm::MockConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestOptions, assert_error, id_of, messages_path, spawn_app, spawn_app_with,
};

async fn send_with_key(
    app: &TestApp,
    conversation: &str,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    app.request(Method::POST, &messages_path(conversation))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn replayed(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

async fn jobs_in_database(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retried_send_returns_the_first_job_and_stores_one_message() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let body = json!({ "content": "only once, please" });

    let first = send_with_key(&app, &id, "retry-1", &body).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(!replayed(&first));
    let first: Value = first.json().await.unwrap();
    let job = id_of(&first["job"]);
    app.wait_for_job(&job).await;

    let again = send_with_key(&app, &id, "retry-1", &body).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert!(replayed(&again), "{:?}", again.headers());
    let location = again.headers()["location"].to_str().unwrap().to_owned();
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["job"]["id"], job.as_str());
    assert_eq!(again["message"]["id"], first["message"]["id"]);
    assert_eq!(location, format!("/v1/jobs/{job}"));

    let history = app.history(&id).await;
    let users: Vec<_> = history.iter().filter(|m| m["role"] == "user").collect();
    assert_eq!(users.len(), 1, "{history:?}");
    assert_eq!(history.len(), 2, "one reply too: {history:?}");
    assert_eq!(jobs_in_database(&app).await, 1);
    assert_eq!(app.mock.requests().len(), 1);

    // Keys belong to a tenant: another tenant's "retry-1" is a request of its own.
    let other_key = app.other_tenant_key("tenant-b").await;
    let theirs: Value = app
        .request_as(&other_key, Method::POST, "/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = app
        .request_as(&other_key, Method::POST, &messages_path(&id_of(&theirs)))
        .header("Idempotency-Key", "retry-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(!replayed(&response));
    let theirs: Value = response.json().await.unwrap();
    assert_ne!(theirs["job"]["id"], job.as_str());
    assert_eq!(jobs_in_database(&app).await, 2);
    app.stop().await;
}

/// Sends `body` with a key already used for another request, and checks it is refused and
/// writes nothing.
async fn assert_key_reuse_refused(app: &TestApp, conversation: &str, key: &str, body: &Value) {
    let before = app.row_counts().await;
    let response = send_with_key(app, conversation, key, body).await;
    let error = assert_error(response, StatusCode::CONFLICT, "conflict_error").await;
    assert_eq!(error["code"], "idempotency_key_reused", "{body}");
    assert_eq!(app.row_counts().await, before, "{body}");
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused_and_writes_nothing() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 2500,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let first_body = json!({ "content": "first" });
    let first = send_with_key(&app, &id, "retry-2", &first_body).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let job = id_of(&first["job"]);

    // While the first job is still pending...
    assert_key_reuse_refused(&app, &id, "retry-2", &json!({ "content": "second" })).await;
    let pending = app.get_ok(&format!("/v1/jobs/{job}")).await;
    assert!(
        matches!(pending["status"].as_str(), Some("queued" | "running")),
        "{pending}"
    );
    // ... and after it finished; other parameters, or the same body in another conversation, are
    // another request too.
    app.wait_for_job(&job).await;
    assert_key_reuse_refused(&app, &id, "retry-2", &json!({ "content": "second" })).await;
    assert_key_reuse_refused(
        &app,
        &id,
        "retry-2",
        &json!({ "content": "first", "temperature": 0.5 }),
    )
    .await;
    let elsewhere = id_of(&app.create_conversation(json!({})).await);
    assert_key_reuse_refused(&app, &elsewhere, "retry-2", &first_body).await;

    let history = app.history(&id).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["content"], "first");
    assert!(app.history(&elsewhere).await.is_empty());
    assert_eq!(app.mock.requests().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn two_requests_sent_at_once_with_one_key_make_one_job() {
    let app = spawn_app().await;
    let body = json!({ "content": "double click" });
    // Several rounds, each in a fresh conversation, to give the race a chance to show.
    for round in 0..5 {
        let id = id_of(&app.create_conversation(json!({})).await);
        let key = format!("double-{round}");
        let (a, b) = tokio::join!(
            send_with_key(&app, &id, &key, &body),
            send_with_key(&app, &id, &key, &body),
        );
        assert_eq!(a.status(), StatusCode::ACCEPTED);
        assert_eq!(b.status(), StatusCode::ACCEPTED);
        assert_eq!(
            [replayed(&a), replayed(&b)].iter().filter(|r| **r).count(),
            1,
            "exactly one of the two is the replay"
        );
        let a: Value = a.json().await.unwrap();
        let b: Value = b.json().await.unwrap();
        assert_eq!(a["job"]["id"], b["job"]["id"]);
        assert_eq!(a["message"]["id"], b["message"]["id"]);
        app.wait_for_job(&id_of(&a["job"])).await;
        let history = app.history(&id).await;
        let roles: Vec<_> = history
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant"], "round {round}");
    }
    assert_eq!(jobs_in_database(&app).await, 5);
    assert_eq!(app.mock.requests().len(), 5);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_after_the_history_was_cleared_still_names_its_job() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let body = json!({ "content": "soon forgotten" });
    let first: Value = send_with_key(&app, &id, "retry-3", &body)
        .await
        .json()
        .await
        .unwrap();
    let job = id_of(&first["job"]);
    app.wait_for_job(&job).await;
    let cleared = app
        .request(Method::DELETE, &messages_path(&id))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);

    // The message is gone, but the job the key stands for is still there to poll.
    let before = app.row_counts().await;
    let again = send_with_key(&app, &id, "retry-3", &body).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert!(replayed(&again));
    assert_eq!(
        again.headers().get("location").map(|v| v.to_str().unwrap()),
        Some(format!("/v1/jobs/{job}").as_str())
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["job"]["id"], job.as_str());
    assert_eq!(again["job"]["status"], "succeeded");
    assert_eq!(again["message"], Value::Null);
    assert_eq!(app.row_counts().await, before);
    assert!(app.history(&id).await.is_empty());
    app.stop().await;
}
