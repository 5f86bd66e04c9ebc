//! `CHATQ_MODELS` is the list of models clients may ask for, on every route that takes a model.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::bad_input::{Case, check};
use crate::helpers::{TestOptions, id_of, messages_path, spawn_app_with};

#[tokio::test]
async fn a_model_outside_the_allow_list_is_refused_on_every_route() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| s.provider.models = "mock-model,mock-other".into()),
        ..TestOptions::default()
    })
    .await;
    let conversation = id_of(&app.create_conversation(json!({})).await);
    let unknown = |what, path: &str, body| {
        Case::new(what, Method::POST, path)
            .json(body)
            .status(StatusCode::NOT_FOUND, "not_found_error")
    };
    check(
        &app,
        vec![
            unknown(
                "a conversation's model",
                "/v1/conversations",
                json!({ "model": "gpt-expensive" }),
            ),
            unknown(
                "a message's model",
                &messages_path(&conversation),
                json!({ "content": "hi", "model": "gpt-expensive" }),
            ),
            unknown(
                "a chat completion's model",
                "/v1/chat/completions",
                json!({ "model": "gpt-expensive", "messages": [{ "role": "user", "content": "hi" }] }),
            ),
        ],
    )
    .await;
    // The models on the list are served everywhere.
    let allowed = app
        .create_conversation(json!({ "model": "mock-other" }))
        .await;
    assert_eq!(allowed["model"], "mock-other");
    let response = app
        .post_json(
            &messages_path(&conversation),
            &json!({ "content": "hi", "model": "mock-other" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.stop().await;
}
