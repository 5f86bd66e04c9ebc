//! `POST /v1/chat/completions` and `GET /v1/models`, in the OpenAI shapes, and the official
//! `openai` Python SDK pointed at chatq.

use chatq_common::chat::{ChatMessage, Role};
use chatq_mock_llm::MockConfig;
use chatq_mock_llm::reply::{prompt_tokens, reply_tokens};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestOptions, assert_error, run_sdk_script, spawn_app, spawn_app_with};
use crate::sse::SseReader;

fn expected_reply(messages: &[ChatMessage], tokens: usize) -> String {
    reply_tokens(messages, tokens).concat()
}

#[tokio::test]
async fn a_completion_has_the_openai_shape_and_runs_as_a_job() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&json!({
            "model": "mock-model",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Say hi"}],
            "temperature": 0,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let job_id = response.headers()["x-chatq-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();

    let prompt = [
        ChatMessage::new(Role::System, "be brief"),
        ChatMessage::new(Role::User, "Say hi"),
    ];
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], "mock-model");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        expected_reply(&prompt, 16)
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens(&prompt));
    assert_eq!(body["usage"]["completion_tokens"], 16);
    assert_eq!(body["usage"]["total_tokens"], prompt_tokens(&prompt) + 16);

    let job = app.wait_for_job(&job_id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["lane"], "interactive");
    assert_eq!(job["conversation_id"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_streamed_completion_sends_chunks_then_usage_then_done() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            tokens: 8,
            token_delay_ms: 20,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let response = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&json!({
            "model": "mock-model",
            "messages": [{"role": "user", "content": "Say hi"}],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_completion_tokens": 5,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert!(response.headers().contains_key("x-chatq-job-id"));
    let events = SseReader::new(response).collect().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| e.json())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");

    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let prompt = [ChatMessage::new(Role::User, "Say hi")];
    assert_eq!(
        text,
        expected_reply(&prompt, 5),
        "max_completion_tokens caps the reply"
    );
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| {
            !c["choices"][0]["finish_reason"].is_null()
                && c["choices"].as_array().is_some_and(|a| !a.is_empty())
        })
        .map(|c| &c["choices"][0]["finish_reason"])
        .collect();
    assert_eq!(finish, [&json!("length")]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null())
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_refused_by_name_and_nothing_runs() {
    let app = spawn_app().await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"model": "mock-model", "messages": user, "tools": []}),
            "tools",
        ),
        (
            json!({"model": "mock-model", "messages": user, "n": 0}),
            "n",
        ),
        (
            json!({"model": "mock-model", "messages": user, "logprobs": "yes"}),
            "logprobs",
        ),
        (
            json!({"model": "mock-model", "messages": user, "frobnicate": true}),
            "frobnicate",
        ),
        (
            json!({"model": "mock-model", "messages": user, "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"messages": user}), "model"),
        (json!({"model": "mock-model", "messages": []}), "messages"),
        (
            json!({"model": "mock-model", "messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"model": "mock-model", "messages": user, "temperature": 3}),
            "temperature",
        ),
        (
            json!({"model": "mock-model", "messages": user, "max_completion_tokens": 0}),
            "max_completion_tokens",
        ),
    ];
    for (body, param) in cases {
        let response = app
            .request(Method::POST, "/v1/chat/completions")
            .json(&body)
            .send()
            .await
            .unwrap();
        let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
        assert_eq!(error["param"], param, "{body}");
    }
    assert_eq!(app.row_counts().await.2, 0, "no job was recorded");
    assert!(
        app.mock.requests().is_empty(),
        "the provider was never called"
    );
    app.stop().await;
}

#[tokio::test]
async fn models_are_listed_and_unknown_ones_refused_when_a_list_is_configured() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| s.provider.models = "mock-model, mock-large".into()),
        ..TestOptions::default()
    })
    .await;
    let models: Value = app
        .request(Method::GET, "/v1/models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock-model", "mock-large"]);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["object"], "model");

    let response = app
        .request(Method::GET, "/v1/models/mock-large")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .request(Method::GET, "/v1/models/gpt-x")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    let response = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    app.stop().await;
}

/// The official `openai` package, unpatched, pointed at chatq with `base_url`.
#[tokio::test]
async fn the_openai_python_sdk_works_against_chatq() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            tokens: 12,
            token_delay_ms: 5,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let prompt = [ChatMessage::new(Role::User, "Say hi from the SDK")];
    let expected = [
        ("EXPECTED_REPLY", expected_reply(&prompt, 12)),
        ("EXPECTED_PROMPT_TOKENS", prompt_tokens(&prompt).to_string()),
    ];
    run_sdk_script(&app, "openai_sdk.py", &expected, "all SDK checks passed").await;
    app.stop().await;
}

fn completion_body() -> Value {
    json!({
        "model": "mock-model",
        "messages": [{"role": "user", "content": "Say hi once"}],
    })
}

#[tokio::test]
async fn a_completion_retried_with_its_idempotency_key_calls_the_provider_once() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 300,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let send = |key: &'static str| {
        app.request(Method::POST, "/v1/chat/completions")
            .header("idempotency-key", key)
            .json(&completion_body())
            .send()
    };
    // Two at once (a client retrying while the first is still running), then once more.
    let (first, second) = tokio::join!(send("completion-1"), send("completion-1"));
    let third = send("completion-1").await.unwrap();
    let mut ids = Vec::new();
    for response in [first.unwrap(), second.unwrap(), third] {
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one completion: {ids:?}"
    );
    assert_eq!(app.mock.stats().requests, 1, "the provider was called once");
    // The same key for another request is refused.
    let other = app
        .request(Method::POST, "/v1/chat/completions")
        .header("idempotency-key", "completion-1")
        .json(&json!({"model": "mock-model", "messages": [{"role": "user", "content": "else"}]}))
        .send()
        .await
        .unwrap();
    assert_error(other, StatusCode::CONFLICT, "conflict_error").await;
    app.stop().await;
}

async fn abandoned_completion(cancel_abandoned: bool) -> (String, crate::helpers::TestApp) {
    let app = spawn_app_with(TestOptions {
        // No worker yet: the job waits in the queue while its client gives up.
        workers: 0,
        settings: Box::new(move |s| s.ingress.cancel_abandoned_completions = cancel_abandoned),
        ..TestOptions::default()
    })
    .await;
    let gave_up = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&completion_body())
        .timeout(std::time::Duration::from_millis(500))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gives up before any answer");
    let job: uuid::Uuid = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    (chatq_common::ids::JobId::from_uuid(job).to_string(), app)
}

#[tokio::test]
async fn a_completion_whose_client_left_before_it_started_is_cancelled() {
    let (job, app) = abandoned_completion(true).await;
    let ended = app.wait_for_job(&job).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(
        app.mock.stats().requests,
        0,
        "the provider was never called"
    );
    app.stop().await;
}

#[tokio::test]
async fn with_the_setting_off_an_abandoned_completion_still_runs() {
    let (job, app) = abandoned_completion(false).await;
    let polled = app.get_ok(&format!("/v1/jobs/{job}?wait=1")).await;
    assert_eq!(polled["status"], "queued", "{polled}");
    app.stop().await;
}
