//! The Responses API (`/v1/responses`): bad input, tenancy, delete, input items, the history
//! `previous_response_id` sends, retention, and the official `openai` SDK in background mode
//! (polling, a stream dropped and resumed, cancel, continuation).

use std::time::Duration;

use chatq_common::chat::{ChatMessage, Role};
use chatq_mock_llm::MockConfig;
use chatq_mock_llm::reply::reply_tokens;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestOptions, assert_error, run_sdk_script, spawn_app, spawn_app_with,
};

/// Creates a response and polls it until it is no longer queued or in progress.
async fn create_and_finish(app: &TestApp, body: Value) -> Value {
    let response = app.post_json("/v1/responses", &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let created: Value = response.json().await.unwrap();
    wait_for_response(app, created["id"].as_str().unwrap()).await
}

/// Polls a response until it is no longer queued or in progress; returns it.
pub(crate) async fn wait_for_response(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let current = app.get_ok(&format!("/v1/responses/{id}")).await;
        if !matches!(current["status"].as_str(), Some("queued" | "in_progress")) {
            return current;
        }
        assert!(tokio::time::Instant::now() < deadline, "{current}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_requests_are_refused_in_the_openai_shape_and_record_nothing() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|settings| settings.provider.models = "mock-model".into()),
        ..TestOptions::default()
    })
    .await;
    let cases = [
        (json!({"input": "hi"}), "model"),
        (json!({"model": "mock-model"}), "input"),
        (json!({"model": "mock-model", "input": ""}), "input"),
        (json!({"model": "mock-model", "input": []}), "input"),
        (json!({"model": "mock-model", "input": 7}), "input"),
        (
            json!({"model": "mock-model", "input": [{"role": "robot", "content": "hi"}]}),
            "input[0].role",
        ),
        (
            json!({"model": "mock-model", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input[0].content[0].type",
        ),
        (
            json!({"model": "mock-model", "input": [{"type": "function_call", "name": "f"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "mock-model", "input": "hi", "temperature": 3}),
            "temperature",
        ),
        (
            json!({"model": "mock-model", "input": "hi", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            json!({"model": "mock-model", "input": "hi", "metadata": {"k": 1}}),
            "metadata.k",
        ),
        (
            json!({"model": "mock-model", "input": "hi", "background": true, "store": false}),
            "background",
        ),
        (
            json!({"model": "mock-model", "input": "hi", "previous_response_id": "nope"}),
            "previous_response_id",
        ),
        (
            json!({"model": "mock-model", "input": "hi", "tools": [{"type": "web_search"}]}),
            "tools",
        ),
        (
            json!({"model": "mock-model", "input": "hi", "frobnicate": true}),
            "frobnicate",
        ),
        (
            json!({"model": "mock-model", "input": "a\u{0000}b"}),
            "input",
        ),
    ];
    for (body, param) in cases {
        let response = app.post_json("/v1/responses", &body).await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
        assert_eq!(error["param"], param, "{body}: {error}");
    }
    // An unknown model, and an earlier response that does not exist: 404.
    let response = app
        .post_json("/v1/responses", &json!({"model": "gpt-x", "input": "hi"}))
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    let response = app
        .post_json(
            "/v1/responses",
            &json!({"model": "mock-model", "input": "hi",
                    "previous_response_id": "resp_0190f2b5c1a87b6e9d2f3a4b5c6d7e8f"}),
        )
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    for path in [
        "/v1/responses/nope",
        "/v1/responses/resp_0190f2b5c1a87b6e9d2f3a4b5c6d7e8f?starting_after=3",
    ] {
        assert_error(
            app.get(path).await,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        )
        .await;
    }
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "bad requests recorded jobs");
    app.stop().await;
}

#[tokio::test]
async fn another_tenants_response_is_not_found_anywhere() {
    let app = spawn_app().await;
    let done = create_and_finish(
        &app,
        json!({"model": "mock-model", "input": "mine", "background": true}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["id"].as_str().unwrap();
    let other = app.other_tenant_key("tenant-b").await;
    let attempts = [
        (Method::GET, format!("/v1/responses/{id}")),
        (Method::GET, format!("/v1/responses/{id}?stream=true")),
        (Method::GET, format!("/v1/responses/{id}/input_items")),
        (Method::POST, format!("/v1/responses/{id}/cancel")),
        (Method::DELETE, format!("/v1/responses/{id}")),
    ];
    for (method, path) in attempts {
        let response = app.request_as(&other, method, &path).send().await.unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    }
    // Nor can another tenant continue it.
    let response = app
        .request_as(&other, Method::POST, "/v1/responses")
        .json(&json!({"model": "mock-model", "input": "hi", "previous_response_id": id}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    // Still there for its own tenant.
    assert_eq!(
        app.get_ok(&format!("/v1/responses/{id}")).await["status"],
        "completed"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_response_is_gone_with_its_job() {
    let app = spawn_app().await;
    let done = create_and_finish(&app, json!({"model": "mock-model", "input": "forget me"})).await;
    let id = done["id"].as_str().unwrap().to_owned();
    let response = app
        .request(Method::DELETE, &format!("/v1/responses/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["deleted"], true, "{deleted}");
    for path in [
        format!("/v1/responses/{id}"),
        format!("/v1/responses/{id}/input_items"),
    ] {
        assert_error(
            app.get(&path).await,
            StatusCode::NOT_FOUND,
            "not_found_error",
        )
        .await;
    }
    let response = app
        .request(Method::DELETE, &format!("/v1/responses/{id}"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the response's job is deleted with it");
    app.stop().await;
}

#[tokio::test]
async fn input_items_list_what_was_sent_and_page() {
    let app = spawn_app().await;
    let input = json!([
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}, {"type": "input_text", "text": "two"}]},
        {"role": "assistant", "content": "un, deux"},
        {"role": "user", "content": "three"},
    ]);
    let done = create_and_finish(&app, json!({"model": "mock-model", "input": input})).await;
    let id = done["id"].as_str().unwrap();
    let all = app
        .get_ok(&format!("/v1/responses/{id}/input_items?order=asc"))
        .await;
    let texts: Vec<Vec<&str>> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            item["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|part| part["text"].as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        texts,
        vec![
            vec!["Answer in French."],
            vec!["one", "two"],
            vec!["un, deux"],
            vec!["three"]
        ]
    );
    assert_eq!(all["data"][2]["content"][0]["type"], "output_text");
    assert_eq!(all["data"][1]["content"][0]["type"], "input_text");
    assert_eq!(all["has_more"], false);
    // Newest first by default, a page at a time.
    let first = app
        .get_ok(&format!("/v1/responses/{id}/input_items?limit=3"))
        .await;
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    assert_eq!(first["data"][0]["content"][0]["text"], "three");
    assert_eq!(first["has_more"], true);
    let after = first["last_id"].as_str().unwrap();
    let rest = app
        .get_ok(&format!(
            "/v1/responses/{id}/input_items?limit=3&after={after}"
        ))
        .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["content"][0]["text"], "Answer in French.");
    assert_eq!(rest["has_more"], false);
    // What the provider was sent: the developer message as a system one, parts as text parts.
    let sent = app.mock.requests().pop().unwrap();
    let roles: Vec<&str> = sent.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    for path in [
        format!("/v1/responses/{id}/input_items?limit=0"),
        format!("/v1/responses/{id}/input_items?order=up"),
        format!("/v1/responses/{id}/input_items?after=msg_nope"),
    ] {
        assert_error(
            app.get(&path).await,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        )
        .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn previous_response_id_sends_the_earlier_exchange_without_its_instructions() {
    let app = spawn_app().await;
    let one = create_and_finish(
        &app,
        json!({"model": "mock-model", "input": "My name is Ada.", "instructions": "Be brief."}),
    )
    .await;
    let one_reply = one["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let two = create_and_finish(
        &app,
        json!({"model": "mock-model", "input": "What is my name?", "instructions": "Be kind.",
               "previous_response_id": one["id"]}),
    )
    .await;
    assert_eq!(two["status"], "completed", "{two}");
    assert_eq!(two["previous_response_id"], one["id"]);
    let sent = app.mock.requests().pop().unwrap();
    let messages: Vec<(&str, &str)> = sent
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            ("system", "Be kind."),
            ("user", "My name is Ada."),
            ("assistant", one_reply.as_str()),
            ("user", "What is my name?"),
        ]
    );
    // The chain goes on from the second, with both exchanges.
    let three = create_and_finish(
        &app,
        json!({"model": "mock-model", "input": "And again?", "previous_response_id": two["id"]}),
    )
    .await;
    assert_eq!(three["status"], "completed");
    assert_eq!(app.mock.requests().pop().unwrap().messages.len(), 5);
    app.stop().await;
}

#[tokio::test]
async fn responses_are_kept_as_long_as_conversations_not_as_finished_jobs() {
    let app = spawn_app().await;
    let done = create_and_finish(&app, json!({"model": "mock-model", "input": "keep me"})).await;
    let id = done["id"].as_str().unwrap().to_owned();
    let mut settings = app.settings.retention.clone();
    settings.finished_jobs_secs = Some(0);
    settings.dead_letters_secs = Some(0);
    settings.idle_conversations_secs = None;
    let report = chatq_workers::retention::Sweeper::new(app.pool.clone(), settings.clone())
        .sweep()
        .await
        .unwrap();
    assert_eq!(report.finished_jobs, 0, "{report:?}");
    assert_eq!(
        app.get_ok(&format!("/v1/responses/{id}")).await["status"],
        "completed"
    );
    settings.idle_conversations_secs = Some(0);
    // A sweep skips rows another transaction holds (the ingress noting the job's publication may
    // still be at it): the response goes in this pass or a next one.
    let sweeper = chatq_workers::retention::Sweeper::new(app.pool.clone(), settings);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut deleted = 0;
    loop {
        deleted += sweeper.sweep().await.unwrap().responses;
        if deleted > 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(deleted, 1);
    assert_error(
        app.get(&format!("/v1/responses/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found_error",
    )
    .await;
    app.stop().await;
}

/// The official `openai` package: background polling, a stream dropped mid-reply and resumed
/// with `starting_after`, cancel, `previous_response_id`, input items and delete.
#[tokio::test]
async fn the_openai_sdk_runs_background_responses_and_resumes_their_streams() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            tokens: 24,
            token_delay_ms: 40,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let prompt = "Tell me about queues";
    let expected = reply_tokens(&[ChatMessage::new(Role::User, prompt)], 24).concat();
    let env = [("EXPECTED_REPLY", expected), ("PROMPT", prompt.to_owned())];
    run_sdk_script(
        &app,
        "openai_responses.py",
        &env,
        "all Responses checks passed",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_conversation_longer_than_a_request_may_be_is_refused() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|settings| settings.limits.max_request_bytes = 4096),
        ..TestOptions::default()
    })
    .await;
    let long = "a".repeat(2500);
    let one = create_and_finish(&app, json!({"model": "mock-model", "input": long})).await;
    assert_eq!(one["status"], "completed", "{one}");
    let response = app
        .post_json(
            "/v1/responses",
            &json!({"model": "mock-model", "input": "b".repeat(2000), "previous_response_id": one["id"]}),
        )
        .await;
    let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    assert_eq!(error["code"], "context_length_exceeded", "{error}");
    app.stop().await;
}
