//! The reply cache: repeated deterministic requests are served from it, sampled ones never;
//! tenants never share a reply; clients can opt out; negative feedback evicts; a cached reply
//! streams like any other; with the semantic tier on, a near-duplicate is served too.

mod completions;
mod history;
mod semantic;
mod streams;
mod turns;

use chatq_mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// The mock answers with `text` from now on, so a reply shows which call made it.
fn answer_with(app: &TestApp, text: &str) {
    app.mock.set_config(MockConfig {
        reply: Some(text.into()),
        ..app.mock.config()
    });
}

/// Chat completions the mock has been asked for.
fn provider_calls(app: &TestApp) -> u64 {
    app.mock.stats().requests
}

/// A finished chat completion: its `x-chatq-cache` and `x-chatq-cache-tier` headers, its job
/// id and its body.
struct Completed {
    cache: String,
    tier: String,
    job: String,
    body: Value,
}

impl Completed {
    fn content(&self) -> &str {
        self.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
    }
}

/// A question at temperature 0 (deterministic, so cacheable).
fn deterministic(question: &str) -> Value {
    json!({
        "model": "mock-model",
        "temperature": 0,
        "messages": [{"role": "user", "content": question}],
    })
}

async fn complete_as(app: &TestApp, key: &str, body: &Value) -> Completed {
    complete_with(
        app.request_as(key, Method::POST, "/v1/chat/completions"),
        body,
    )
    .await
}

async fn complete(app: &TestApp, body: &Value) -> Completed {
    complete_as(app, &app.key, body).await
}

async fn complete_with(request: reqwest::RequestBuilder, body: &Value) -> Completed {
    let response = request.json(body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let cache = header("x-chatq-cache");
    let tier = header("x-chatq-cache-tier");
    let job = header("x-chatq-job-id");
    let body: Value = response.json().await.unwrap();
    Completed {
        cache,
        tier,
        job,
        body,
    }
}

/// The job view of a completion.
async fn job_of(app: &TestApp, completed: &Completed) -> Value {
    app.get_ok(&format!("/v1/jobs/{}", completed.job)).await
}
