//! Every bad input gets the documented status and an OpenAI-shaped error naming what was wrong,
//! and writes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestOptions, assert_error, id_of, messages_path, spawn_app_with};

const MAX_MESSAGE_CHARS: usize = 200;
const MAX_REQUEST_BYTES: usize = 2048;
const MAX_OUTPUT_TOKENS: u32 = 1000;

async fn spawn_small_limits() -> TestApp {
    spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            s.limits.max_message_chars = MAX_MESSAGE_CHARS;
            s.limits.max_request_bytes = MAX_REQUEST_BYTES;
            s.limits.max_output_tokens = MAX_OUTPUT_TOKENS;
        }),
        ..TestOptions::default()
    })
    .await
}

/// One bad request and the error it must get.
pub(crate) struct Case {
    what: &'static str,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    header: Option<(&'static str, String)>,
    status: StatusCode,
    kind: &'static str,
    /// The expected `code`, when one is documented.
    code: Option<&'static str>,
    /// The expected `param`, when one applies.
    param: Option<&'static str>,
}

impl Case {
    pub(crate) fn new(what: &'static str, method: Method, path: impl Into<String>) -> Self {
        Self {
            what,
            method,
            path: path.into(),
            body: None,
            header: None,
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            param: None,
        }
    }

    pub(crate) fn json(mut self, body: Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self
    }

    pub(crate) fn raw(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub(crate) fn status(mut self, status: StatusCode, kind: &'static str) -> Self {
        self.status = status;
        self.kind = kind;
        self
    }

    pub(crate) fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub(crate) fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.header = Some((name, value.into()));
        self
    }
}

/// Sends each case and checks its error and that it wrote nothing; reports every case that
/// failed, not only the first.
pub(crate) async fn check(app: &TestApp, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let before = app.row_counts().await;
        let mut request = app
            .request(case.method.clone(), &case.path)
            .header("content-type", "application/json");
        if let Some(body) = case.body {
            request = request.body(body);
        }
        if let Some((name, value)) = &case.header {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let what = format!("{} ({} {})", case.what, case.method, case.path);
        let Ok(body) = serde_json::from_str::<Value>(&text) else {
            failures.push(format!("{what}: {status}, not JSON: {text:?}"));
            continue;
        };
        let error = &body["error"];
        let mut wrong = Vec::new();
        if status != case.status {
            wrong.push(format!("status {status}, expected {}", case.status));
        }
        if error["type"] != case.kind {
            wrong.push(format!("type, expected {}", case.kind));
        }
        if error["message"].as_str().is_none_or(str::is_empty) {
            wrong.push("no message".to_owned());
        }
        if let Some(code) = case.code
            && error["code"] != code
        {
            wrong.push(format!("code, expected {code}"));
        }
        if let Some(param) = case.param
            && error["param"] != param
        {
            wrong.push(format!("param, expected {param:?}"));
        }
        if app.row_counts().await != before {
            wrong.push("it wrote something".to_owned());
        }
        if !wrong.is_empty() {
            failures.push(format!("{what}: {} in {body}", wrong.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn bad_messages_are_refused_with_the_parameter_named() {
    let app = spawn_small_limits().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let send = || messages_path(&id);
    let post = Method::POST;
    let too_long = "x".repeat(MAX_MESSAGE_CHARS + 1);
    check(
        &app,
        vec![
            Case::new("malformed JSON", post.clone(), send())
                .raw(r#"{"content": "hi""#)
                .code("invalid_json"),
            Case::new("not JSON at all", post.clone(), send()).raw("content=hi"),
            Case::new("JSON followed by more", post.clone(), send())
                .raw(r#"{"content": "hi"} {"content": "again"}"#)
                .code("invalid_json"),
            Case::new("a field given twice", post.clone(), send())
                .raw(r#"{"content": "hi", "content": "again"}"#)
                .param("content"),
            Case::new("an empty body", post.clone(), send()).raw(""),
            Case::new("a JSON array", post.clone(), send()).json(json!(["hi"])),
            Case::new("content of the wrong type", post.clone(), send())
                .json(json!({ "content": 5 }))
                .param("content"),
            Case::new("content missing", post.clone(), send())
                .json(json!({ "model": "mock-model" }))
                .param("content"),
            Case::new("content null", post.clone(), send())
                .json(json!({ "content": null }))
                .param("content"),
            Case::new("empty content", post.clone(), send())
                .json(json!({ "content": "" }))
                .param("content"),
            Case::new("blank content", post.clone(), send())
                .json(json!({ "content": " \n\t " }))
                .param("content"),
            Case::new("content too long", post.clone(), send())
                .json(json!({ "content": too_long }))
                .code("string_above_max_length")
                .param("content"),
            Case::new("an unknown field", post.clone(), send())
                .json(json!({ "content": "hi", "temprature": 1 }))
                .param("temprature"),
            Case::new("temperature above 2", post.clone(), send())
                .json(json!({ "content": "hi", "temperature": 2.5 }))
                .param("temperature"),
            Case::new("temperature below 0", post.clone(), send())
                .json(json!({ "content": "hi", "temperature": -0.1 }))
                .param("temperature"),
            Case::new("temperature of the wrong type", post.clone(), send())
                .json(json!({ "content": "hi", "temperature": "hot" }))
                .param("temperature"),
            Case::new("max_tokens 0", post.clone(), send())
                .json(json!({ "content": "hi", "max_tokens": 0 }))
                .param("max_tokens"),
            Case::new("max_tokens above the limit", post.clone(), send())
                .json(json!({ "content": "hi", "max_tokens": MAX_OUTPUT_TOKENS + 1 }))
                .param("max_tokens"),
            Case::new("max_tokens negative", post.clone(), send())
                .json(json!({ "content": "hi", "max_tokens": -1 }))
                .param("max_tokens"),
            Case::new("top_p above 1", post.clone(), send())
                .json(json!({ "content": "hi", "top_p": 1.5 }))
                .param("top_p"),
            Case::new("an empty model", post.clone(), send())
                .json(json!({ "content": "hi", "model": " " }))
                .param("model"),
            Case::new("a body over max_request_bytes", post.clone(), send())
                .json(json!({ "content": "x".repeat(MAX_REQUEST_BYTES) }))
                .status(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            Case::new("an empty Idempotency-Key", post.clone(), send())
                .json(json!({ "content": "hi" }))
                .header("idempotency-key", "")
                .param("Idempotency-Key"),
            Case::new("an Idempotency-Key too long", post.clone(), send())
                .json(json!({ "content": "hi" }))
                .header("idempotency-key", "k".repeat(256))
                .param("Idempotency-Key"),
            Case::new("an Idempotency-Key with a tab", post.clone(), send())
                .json(json!({ "content": "hi" }))
                .header("idempotency-key", "a\tb")
                .param("Idempotency-Key"),
        ],
    )
    .await;

    // A body sent in chunks, without a Content-Length, is held to the same limit.
    let before = app.row_counts().await;
    let body = json!({ "content": "z".repeat(MAX_REQUEST_BYTES) }).to_string();
    let chunks: Vec<Result<String, std::io::Error>> = body
        .as_bytes()
        .chunks(256)
        .map(|chunk| Ok(String::from_utf8_lossy(chunk).into_owned()))
        .collect();
    let chunked = app
        .request(Method::POST, &send())
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_error(chunked, StatusCode::PAYLOAD_TOO_LARGE, "request_too_large").await;
    assert_eq!(app.row_counts().await, before);

    // Just at the limits is fine, so the cases above were refused for the reason they name.
    // (Lengths are in characters: 'é' is two bytes.)
    let at_limit = app
        .post_json(
            &send(),
            &json!({ "content": "é".repeat(MAX_MESSAGE_CHARS), "temperature": 2, "max_tokens": MAX_OUTPUT_TOKENS }),
        )
        .await;
    assert_eq!(at_limit.status(), StatusCode::ACCEPTED);
    app.stop().await;
}

#[tokio::test]
async fn bad_ids_routes_and_methods_are_refused() {
    let app = spawn_small_limits().await;
    let unknown = format!("conv_{}", uuid::Uuid::now_v7().simple());
    let unknown_message = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let unknown_job = format!("job_{}", uuid::Uuid::now_v7().simple());
    let hi = json!({ "content": "hi" });
    let not_found = |c: Case| c.status(StatusCode::NOT_FOUND, "not_found_error");
    check(
        &app,
        vec![
            not_found(Case::new(
                "an unknown conversation",
                Method::GET,
                format!("/v1/conversations/{unknown}"),
            )),
            not_found(
                Case::new(
                    "sending to an unknown conversation",
                    Method::POST,
                    messages_path(&unknown),
                )
                .json(hi.clone()),
            ),
            not_found(Case::new(
                "history of an unknown conversation",
                Method::GET,
                messages_path(&unknown),
            )),
            not_found(Case::new(
                "clearing an unknown conversation",
                Method::DELETE,
                messages_path(&unknown),
            )),
            not_found(Case::new(
                "deleting an unknown conversation",
                Method::DELETE,
                format!("/v1/conversations/{unknown}"),
            )),
            not_found(
                Case::new(
                    "feedback on an unknown message",
                    Method::POST,
                    format!("/v1/messages/{unknown_message}/feedback"),
                )
                .json(json!({ "rating": 1 })),
            ),
            not_found(Case::new(
                "an unknown job",
                Method::GET,
                format!("/v1/jobs/{unknown_job}"),
            )),
            Case::new(
                "an invalid conversation id",
                Method::GET,
                "/v1/conversations/nope",
            )
            .code("invalid_id")
            .param("id"),
            Case::new(
                "sending to an invalid id",
                Method::POST,
                messages_path("nope"),
            )
            .json(hi.clone())
            .code("invalid_id")
            .param("id"),
            Case::new(
                "a job id where a conversation id belongs",
                Method::GET,
                format!("/v1/conversations/{unknown_job}"),
            )
            .code("invalid_id")
            .param("id"),
            Case::new("an invalid job id", Method::GET, "/v1/jobs/nope")
                .code("invalid_id")
                .param("id"),
            Case::new(
                "an invalid message id",
                Method::POST,
                "/v1/messages/nope/feedback",
            )
            .json(json!({ "rating": 1 }))
            .code("invalid_id")
            .param("id"),
            not_found(Case::new(
                "an unknown route",
                Method::GET,
                "/v1/nothing-here",
            )),
            not_found(
                Case::new(
                    "an unknown route under a known one",
                    Method::POST,
                    format!("/v1/conversations/{unknown}/nothing"),
                )
                .json(hi.clone()),
            ),
            Case::new(
                "a method the route does not have",
                Method::PUT,
                "/v1/conversations",
            )
            .json(json!({}))
            .status(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error"),
            Case::new(
                "PUT on a conversation (PATCH renames it)",
                Method::PUT,
                format!("/v1/conversations/{unknown}"),
            )
            .json(json!({}))
            .status(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error"),
        ],
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn bad_conversations_and_listing_parameters_are_refused() {
    let app = spawn_small_limits().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let create = "/v1/conversations";
    let post = Method::POST;
    let get = Method::GET;
    let list = |query: &str| format!("/v1/conversations?{query}");
    let history = |query: &str| format!("{}?{query}", messages_path(&id));
    check(
        &app,
        vec![
            Case::new("malformed JSON", post.clone(), create)
                .raw("{")
                .code("invalid_json"),
            Case::new("a title of the wrong type", post.clone(), create)
                .json(json!({ "title": 7 }))
                .param("title"),
            Case::new("an unknown field", post.clone(), create)
                .json(json!({ "titel": "x" }))
                .param("titel"),
            Case::new("a system prompt too long", post.clone(), create)
                .json(json!({ "system_prompt": "s".repeat(MAX_MESSAGE_CHARS + 1) }))
                .code("string_above_max_length")
                .param("system_prompt"),
            Case::new("metadata that is not strings", post.clone(), create)
                .json(json!({ "metadata": { "n": 1 } }))
                .param("metadata.n"),
            Case::new("a body over max_request_bytes", post.clone(), create)
                .json(json!({ "title": "t".repeat(MAX_REQUEST_BYTES) }))
                .status(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            Case::new(
                "feedback over max_request_bytes",
                post.clone(),
                format!(
                    "/v1/messages/msg_{}/feedback",
                    uuid::Uuid::now_v7().simple()
                ),
            )
            .json(json!({ "rating": 1, "comment": "c".repeat(MAX_REQUEST_BYTES) }))
            .status(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            Case::new("limit 0", get.clone(), list("limit=0")).param("limit"),
            Case::new("limit above 100", get.clone(), list("limit=101")).param("limit"),
            Case::new("limit negative", get.clone(), list("limit=-1")).param("limit"),
            Case::new("limit not a number", get.clone(), list("limit=ten")).param("limit"),
            Case::new("after not an id", get.clone(), list("after=nope"))
                .code("invalid_id")
                .param("after"),
            Case::new(
                "after a message id",
                get.clone(),
                list(&format!("after=msg_{}", uuid::Uuid::now_v7().simple())),
            )
            .code("invalid_id")
            .param("after"),
            Case::new("an unknown query parameter", get.clone(), list("order=asc")).param("order"),
            Case::new("limit given twice", get.clone(), list("limit=2&limit=3")).param("limit"),
            Case::new("history limit 0", get.clone(), history("limit=0")).param("limit"),
            Case::new(
                "history limit not a number",
                get.clone(),
                history("limit=all"),
            )
            .param("limit"),
            Case::new(
                "history before not a number",
                get.clone(),
                history("before=last"),
            )
            .param("before"),
            Case::new(
                "job wait not a number",
                get.clone(),
                format!("/v1/jobs/job_{}?wait=soon", uuid::Uuid::now_v7().simple()),
            )
            .param("wait"),
        ],
    )
    .await;
    app.stop().await;
}
