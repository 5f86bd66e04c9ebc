//! A conversation's life: one reply at a time (409 `conversation_busy`), clearing its history,
//! deleting it.

use std::time::{Duration, Instant};

use chatq_mock_llm::MockConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestOptions, assert_error, id_of, messages_path, spawn_app, spawn_app_with,
};

/// A provider slow enough that a job is still pending while the test makes a few requests.
fn slow_provider() -> TestOptions {
    TestOptions {
        mock: MockConfig {
            ttft_ms: 3000,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    }
}

/// Asserts the job has not finished yet (so whatever was refused before this was refused while
/// it was pending).
async fn assert_pending(app: &TestApp, job: &str) {
    let job = app.get_ok(&format!("/v1/jobs/{job}")).await;
    assert!(
        matches!(job["status"].as_str(), Some("queued" | "running")),
        "the job finished too early for this test to prove anything: {job}"
    );
}

#[tokio::test]
async fn a_second_message_while_a_reply_is_pending_is_refused_and_writes_nothing() {
    let app = spawn_app_with(slow_provider()).await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let job = id_of(&app.send(&id, "first").await["job"]);

    let before = app.row_counts().await;
    let refused = app
        .post_json(&messages_path(&id), &json!({ "content": "second" }))
        .await;
    let error = assert_error(refused, StatusCode::CONFLICT, "conflict_error").await;
    assert_eq!(error["code"], "conversation_busy");
    assert_pending(&app, &job).await;
    assert_eq!(app.row_counts().await, before);

    // Once the reply is in, sending works again.
    let finished = app.wait_for_job(&job).await;
    assert_eq!(finished["status"], "succeeded");
    app.mock.set_config(MockConfig::default());
    let next = app.send(&id, "second").await;
    assert_eq!(next["message"]["seq"], 3);
    let next = app.wait_for_job(&id_of(&next["job"])).await;
    assert_eq!(next["status"], "succeeded");
    let contents: Vec<Value> = app
        .history(&id)
        .await
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(contents, [json!("first"), json!("second")]);
    app.stop().await;
}

#[tokio::test]
async fn clearing_history_empties_it_and_sequence_numbers_keep_growing() {
    let app = spawn_app_with(slow_provider()).await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let path = messages_path(&id);
    let job = id_of(&app.send(&id, "remember this").await["job"]);

    // Not while a reply is being generated: it would lose its question.
    let before = app.row_counts().await;
    let refused = app.request(Method::DELETE, &path).send().await.unwrap();
    let error = assert_error(refused, StatusCode::CONFLICT, "conflict_error").await;
    assert_eq!(error["code"], "conversation_busy");
    assert_pending(&app, &job).await;
    assert_eq!(app.row_counts().await, before);

    app.wait_for_job(&job).await;
    assert_eq!(app.history(&id).await.len(), 2);
    let cleared = app.request(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert!(app.history(&id).await.is_empty());
    let conversation = app.get_ok(&format!("/v1/conversations/{id}")).await;
    assert_eq!(conversation["message_count"], 0);

    // The conversation goes on, numbering after what was cleared; the old turn is forgotten.
    app.mock.set_config(MockConfig::default());
    let accepted = app.send(&id, "start again").await;
    assert_eq!(accepted["message"]["seq"], 3);
    app.wait_for_job(&id_of(&accepted["job"])).await;
    let seqs: Vec<i64> = app
        .history(&id)
        .await
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4]);
    let last_request = app.mock.requests().pop().unwrap();
    assert!(
        last_request
            .messages
            .iter()
            .all(|m| m.content != "remember this"),
        "cleared history was sent to the provider: {last_request:?}"
    );
    let conversation = app.get_ok(&format!("/v1/conversations/{id}")).await;
    assert_eq!(conversation["message_count"], 2);
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_conversation_is_gone_with_its_messages_and_jobs() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({ "title": "doomed" })).await);
    let kept = id_of(&app.create_conversation(json!({ "title": "kept" })).await);
    let job = app.turn(&id, "hello").await;
    let kept_job = app.turn(&kept, "hello").await;

    let deleted = app
        .request(Method::DELETE, &format!("/v1/conversations/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    for path in [
        format!("/v1/conversations/{id}"),
        messages_path(&id),
        format!("/v1/jobs/{}", id_of(&job)),
    ] {
        assert_error(
            app.get(&path).await,
            StatusCode::NOT_FOUND,
            "not_found_error",
        )
        .await;
    }
    let again = app
        .request(Method::DELETE, &format!("/v1/conversations/{id}"))
        .send()
        .await
        .unwrap();
    assert_error(again, StatusCode::NOT_FOUND, "not_found_error").await;
    let send = app
        .post_json(&messages_path(&id), &json!({ "content": "anyone?" }))
        .await;
    assert_error(send, StatusCode::NOT_FOUND, "not_found_error").await;

    // Nothing of it is left in the database; the other conversation is untouched.
    assert_eq!(app.row_counts().await, (1, 2, 1, 0));
    assert_eq!(app.history(&kept).await.len(), 2);
    app.get_ok(&format!("/v1/jobs/{}", id_of(&kept_job))).await;
    app.stop().await;
}

#[tokio::test]
async fn a_conversation_deleted_while_its_reply_is_generated_stays_deleted() {
    let app = spawn_app_with(slow_provider()).await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let job = id_of(&app.send(&id, "are you there?").await["job"]);
    // Wait until the provider is working on it (nothing to wait on but the mock's counter).
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.mock.stats().in_flight == 0 {
        assert!(Instant::now() < deadline, "the provider was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let deleted = app
        .request(Method::DELETE, &format!("/v1/conversations/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    // The reply arrives after the deletion and must not bring anything back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.mock.stats().succeeded == 0 {
        assert!(Instant::now() < deadline, "the provider never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_error(
        app.get(&format!("/v1/jobs/{job}")).await,
        StatusCode::NOT_FOUND,
        "not_found_error",
    )
    .await;
    assert_error(
        app.get(&messages_path(&id)).await,
        StatusCode::NOT_FOUND,
        "not_found_error",
    )
    .await;

    // The worker carries on with other conversations.
    app.mock.set_config(MockConfig::default());
    let other = id_of(&app.create_conversation(json!({})).await);
    let next = app.turn(&other, "still working?").await;
    assert_eq!(next["status"], "succeeded");
    assert_eq!(app.row_counts().await, (1, 2, 1, 0));
    app.stop().await;
}
