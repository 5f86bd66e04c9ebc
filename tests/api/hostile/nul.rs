//! A NUL character (`\u0000`) cannot be stored by Postgres in text or jsonb. Wherever a client
//! sends text, one is refused with a 400 naming the field, writes nothing, and does not disturb
//! the requests recorded alongside it.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::bad_input::{Case, check};
use crate::helpers::{id_of, messages_path, spawn_app};

const NUL: &str = "before\u{0}after";

#[tokio::test]
async fn a_nul_character_in_any_text_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let conversation = id_of(&app.create_conversation(json!({ "title": "t" })).await);
    let job = app.turn(&conversation, "rate me").await;
    let reply = job["reply"]["message_id"].as_str().unwrap().to_owned();
    let send = messages_path(&conversation);
    let nul = |what, method, path: &str, body, param| {
        Case::new(what, method, path)
            .json(body)
            .code("invalid_value")
            .param(param)
    };
    let cases = vec![
        nul(
            "message content",
            Method::POST,
            &send,
            json!({ "content": NUL }),
            "content",
        ),
        nul(
            "a message's model",
            Method::POST,
            &send,
            json!({ "content": "hi", "model": NUL }),
            "model",
        ),
        nul(
            "a stop sequence",
            Method::POST,
            &send,
            json!({ "content": "hi", "stop": ["ok", NUL] }),
            "stop[1]",
        ),
        nul(
            "a title",
            Method::POST,
            "/v1/conversations",
            json!({ "title": NUL }),
            "title",
        ),
        nul(
            "a system prompt",
            Method::POST,
            "/v1/conversations",
            json!({ "system_prompt": NUL }),
            "system_prompt",
        ),
        nul(
            "a metadata value",
            Method::POST,
            "/v1/conversations",
            json!({ "metadata": { "k": NUL } }),
            "metadata.k",
        ),
        nul(
            "a metadata key",
            Method::POST,
            "/v1/conversations",
            json!({ "metadata": { NUL: "v" } }),
            "metadata.before\\u0000after",
        ),
        nul(
            "a new title",
            Method::PATCH,
            &format!("/v1/conversations/{conversation}"),
            json!({ "title": NUL }),
            "title",
        ),
        nul(
            "a feedback comment",
            Method::POST,
            &format!("/v1/messages/{reply}/feedback"),
            json!({ "rating": 1, "comment": NUL }),
            "comment",
        ),
        nul(
            "a chat completion message",
            Method::POST,
            "/v1/chat/completions",
            json!({ "model": "mock-model", "messages": [{ "role": "user", "content": NUL }] }),
            "messages[0].content",
        ),
        nul(
            "a chat completion content part",
            Method::POST,
            "/v1/chat/completions",
            json!({ "model": "mock-model", "messages": [
                { "role": "system", "content": "be brief" },
                { "role": "user", "content": [{ "type": "text", "text": NUL }] },
            ] }),
            "messages[1].content[0].text",
        ),
        nul(
            "a chat completion's metadata",
            Method::POST,
            "/v1/chat/completions",
            json!({ "model": "mock-model", "metadata": { "k": NUL },
                    "messages": [{ "role": "user", "content": "hi" }] }),
            "metadata.k",
        ),
    ];
    check(&app, cases).await;
    app.stop().await;
}

#[tokio::test]
async fn a_nul_character_fails_no_other_request_recorded_with_it() {
    let app = spawn_app().await;
    let mut conversations = Vec::new();
    for _ in 0..24 {
        conversations.push(id_of(&app.create_conversation(json!({})).await));
    }
    // Sent together, so the good and the bad turns are recorded in the same group commits.
    let sends = conversations.iter().enumerate().map(|(i, conversation)| {
        let content = if i % 3 == 0 { NUL } else { "a good question" };
        let request = app
            .request(Method::POST, &messages_path(conversation))
            .json(&json!({ "content": content }));
        async move { (i, request.send().await.unwrap().status()) }
    });
    for (i, status) in join_all(sends).await {
        let expected = if i % 3 == 0 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::ACCEPTED
        };
        assert_eq!(status, expected, "send {i}");
    }
    app.stop().await;
}
