//! The whole chat completions surface through the queue: tools, structured outputs, images, n,
//! logprobs, reasoning; passed to the provider as sent, kept whole on the job, refused clearly
//! when malformed or over a limit. The official SDK and an agent framework run against it.

use std::collections::BTreeMap;

use chatq_common::settings::UnknownParameters;
use chatq_mock_llm::MockConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestOptions, assert_error, run_sdk_script, spawn_app, spawn_app_with,
};
use crate::sse::SseReader;
use crate::tool_calls::calls_of;

fn weather_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }
    })
}

fn question() -> Value {
    json!([{"role": "user", "content": "What is the weather in Paris?"}])
}

async fn complete(app: &TestApp, body: &Value) -> (String, Value) {
    let response = app
        .request(Method::POST, "/v1/chat/completions")
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let job = response.headers()["x-chatq-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (job, response.json().await.unwrap())
}

/// The official `openai` package, unchanged: tool loops streamed and not, `parse` with a schema,
/// `n=3`, logprobs, image parts and reasoning parameters; the provider receives what was sent.
#[tokio::test]
async fn the_openai_sdk_uses_the_whole_surface_through_chatq() {
    let app = spawn_app().await;
    run_sdk_script(&app, "openai_surface.py", &[], "all surface checks passed").await;
    app.stop().await;
}

/// `openai-agents` from PyPI, with chatq as its OpenAI client, runs a tool-using agent.
#[tokio::test]
async fn an_agent_framework_runs_a_tool_using_agent_through_chatq() {
    let app = spawn_app().await;
    run_sdk_script(&app, "openai_agents.py", &[], "all agent checks passed").await;
    app.stop().await;
}

/// A poll, an SSE subscriber and a subscriber that comes late all see the tool calls the
/// completion answered with, and the usage the provider reported is recorded on the job.
#[tokio::test]
async fn a_tool_calling_answer_is_kept_whole_on_its_job() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            token_delay_ms: 20,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let body =
        json!({"model": "mock-model", "messages": question(), "tools": [weather_tool()], "n": 2});
    let (job, completion) = complete(&app, &body).await;
    let answered: Vec<_> = (0..2)
        .map(|i| calls_of(&completion["choices"][i]["message"]))
        .collect();
    assert_eq!(answered[0].len(), 1, "{completion}");
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    assert!(completion["choices"][0]["message"]["content"].is_null());

    let polled = app.get_ok(&format!("/v1/jobs/{job}")).await;
    let stored: Vec<_> = (0..2)
        .map(|i| calls_of(&polled["reply"]["choices"][i]["message"]))
        .collect();
    assert_eq!(stored, answered, "the job keeps every choice's tool calls");
    assert_eq!(polled["reply"]["finish_reason"], "tool_calls");

    // A subscriber that comes after the end is told the whole answer from the job's events.
    let response = app
        .request(Method::GET, &format!("/v1/jobs/{job}/events"))
        .send()
        .await
        .unwrap();
    let events = SseReader::new(response).collect().await;
    let mut streamed: BTreeMap<u64, BTreeMap<u64, (String, String, String)>> = BTreeMap::new();
    for event in events.iter().filter(|e| e.kind() == "message.delta") {
        let data = event.json();
        let choice = data["index"].as_u64().unwrap_or(0);
        for piece in data["tool_calls"].as_array().into_iter().flatten() {
            let call = streamed
                .entry(choice)
                .or_default()
                .entry(piece["index"].as_u64().unwrap())
                .or_default();
            if let Some(id) = piece["id"].as_str() {
                call.0 = id.to_owned();
            }
            call.1 += piece["function"]["name"].as_str().unwrap_or_default();
            call.2 += piece["function"]["arguments"].as_str().unwrap_or_default();
        }
    }
    let streamed: Vec<Vec<_>> = streamed
        .into_values()
        .map(|calls| calls.into_values().collect())
        .collect();
    assert_eq!(streamed, answered, "the events carry the same tool calls");

    let usage: Value = sqlx::query_scalar("SELECT usage FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(usage, completion["usage"], "usage is recorded as reported");
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(usage["completion_tokens_details"].is_object());
    app.stop().await;
}

/// Streamed: tool-call chunks in the provider's order, each choice ending with its reason.
#[tokio::test]
async fn streamed_tool_calls_arrive_as_chunks_in_order() {
    let app = spawn_app().await;
    let body = json!({"model": "mock-model", "messages": question(), "tools": [weather_tool()], "stream": true});
    let response = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .unwrap();
    let events = SseReader::new(response).collect().await;
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| e.json())
        .collect();
    let pieces: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(pieces.len() > 2, "the call streams in pieces: {chunks:?}");
    assert!(pieces[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(pieces[0]["function"]["name"], "get_weather");
    let arguments: String = pieces
        .iter()
        .map(|p| p["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, r#"{"city":"city example"}"#);
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("tool_calls")]);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    app.stop().await;
}

/// With `unknown_parameters = forward`, a parameter chatq does not know reaches the provider;
/// by default it is refused by name.
#[tokio::test]
async fn unknown_parameters_are_refused_or_forwarded_as_the_operator_chooses() {
    let body = json!({"model": "mock-model", "messages": question(), "top_k": 40});
    let refusing = spawn_app().await;
    let response = refusing.post_json("/v1/chat/completions", &body).await;
    let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    assert_eq!(error["param"], "top_k");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("CHATQ_UNKNOWN_PARAMETERS")
    );
    refusing.stop().await;

    let forwarding = spawn_app_with(TestOptions {
        settings: Box::new(|s| s.ingress.unknown_parameters = UnknownParameters::Forward),
        ..TestOptions::default()
    })
    .await;
    complete(&forwarding, &body).await;
    let received = &forwarding.mock.requests()[0].body;
    assert_eq!(received["top_k"], 40, "forwarded as given");
    forwarding.stop().await;
}

/// Malformed tool messages, bad tools and schemas, too many or too large images: a clear 4xx
/// naming the parameter, nothing recorded, the provider never called.
#[tokio::test]
async fn bad_tools_schemas_and_media_are_refused_clearly() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            s.limits.max_media_parts = 2;
            s.limits.max_media_bytes = 4096;
            s.limits.max_schema_bytes = 1024;
        }),
        ..TestOptions::default()
    })
    .await;
    let image = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
    let user_parts = |parts: Vec<Value>| json!([{"role": "user", "content": parts}]);
    let call = json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}});
    let big_schema = json!({"type": "object", "properties": {"x": {"type": "string", "description": "d".repeat(2000)}}});
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "messages[1].tool_call_id",
        ),
        (
            json!({"model": "mock-model", "messages": [{"role": "tool", "content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "messages[0].tool_call_id",
        ),
        (
            json!({"model": "mock-model", "messages": [{"role": "assistant"}]}),
            StatusCode::BAD_REQUEST,
            "messages[0].content",
        ),
        (
            json!({"model": "mock-model", "messages": [{"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function"}]}]}),
            StatusCode::BAD_REQUEST,
            "messages[0].tool_calls[0].function",
        ),
        (
            json!({"model": "mock-model", "messages": [{"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "call_1", "content": {"not": "text"}}]}),
            StatusCode::BAD_REQUEST,
            "messages[1].content",
        ),
        (
            json!({"model": "mock-model", "messages": [{"role": "wizard", "content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "messages[0].role",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "tools": [{"type": "function", "function": {"name": "bad name!"}}]}),
            StatusCode::BAD_REQUEST,
            "tools[0].function.name",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "tools": [{"type": "function", "function": {"name": "f", "parameters": big_schema}}]}),
            StatusCode::BAD_REQUEST,
            "tools[0].function.parameters",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "tools": [{"type": "function", "function": {"name": "f", "parameters": "not a schema"}}]}),
            StatusCode::BAD_REQUEST,
            "tools[0].function.parameters",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [weather_tool()]}),
            StatusCode::BAD_REQUEST,
            "tool_choice",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": big_schema}}}),
            StatusCode::BAD_REQUEST,
            "response_format.json_schema.schema",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}),
            StatusCode::BAD_REQUEST,
            "response_format.json_schema.name",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "response_format": {"type": "yaml"}}),
            StatusCode::BAD_REQUEST,
            "response_format.type",
        ),
        (
            json!({"model": "mock-model", "messages": user_parts(vec![image("https://a/1.png"), image("https://a/2.png"), image("https://a/3.png")])}),
            StatusCode::BAD_REQUEST,
            "messages[0].content[2]",
        ),
        (
            json!({"model": "mock-model", "messages": user_parts(vec![image(&format!("data:image/png;base64,{}", "A".repeat(5000)))])}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "messages[0].content[0]",
        ),
        (
            json!({"model": "mock-model", "messages": user_parts(vec![image("file:///etc/passwd")])}),
            StatusCode::BAD_REQUEST,
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "n": 17}),
            StatusCode::BAD_REQUEST,
            "n",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "top_logprobs": 3}),
            StatusCode::BAD_REQUEST,
            "top_logprobs",
        ),
        (
            json!({"model": "mock-model", "messages": question(), "reasoning_effort": "extreme"}),
            StatusCode::BAD_REQUEST,
            "reasoning_effort",
        ),
    ];
    for (body, status, param) in cases {
        let response = app.post_json("/v1/chat/completions", &body).await;
        let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request_too_large"
        } else {
            "invalid_request_error"
        };
        let error = assert_error(response, status, kind).await;
        assert_eq!(error["param"], param, "{body}\n{error}");
    }
    assert_eq!(app.row_counts().await.2, 0, "no job was recorded");
    assert!(
        app.mock.requests().is_empty(),
        "the provider was never called"
    );
    app.stop().await;
}
