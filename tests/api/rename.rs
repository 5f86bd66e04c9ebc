//! Renaming a conversation: `PATCH /v1/conversations/{id}` with a new title.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, id_of, spawn_app};

async fn rename(app: &TestApp, id: &str, body: &Value) -> reqwest::Response {
    app.request(Method::PATCH, &format!("/v1/conversations/{id}"))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_renamed_conversation_keeps_everything_but_its_title() {
    let app = spawn_app().await;
    let created = app
        .create_conversation(json!({ "title": "draft", "system_prompt": "Be brief." }))
        .await;
    let id = id_of(&created);
    app.turn(&id, "hello").await;
    let before = app.get_ok(&format!("/v1/conversations/{id}")).await;

    let response = rename(&app, &id, &json!({ "title": "  Trip to Lisbon  " })).await;
    assert_eq!(response.status(), StatusCode::OK);
    let renamed: Value = response.json().await.unwrap();
    assert_eq!(renamed["title"], "Trip to Lisbon", "the title is trimmed");
    for field in [
        "id",
        "system_prompt",
        "model",
        "metadata",
        "message_count",
        "created_at",
        "last_activity_at",
    ] {
        assert_eq!(renamed[field], before[field], "{field} is unchanged");
    }
    assert_eq!(
        app.get_ok(&format!("/v1/conversations/{id}")).await,
        renamed
    );
    let listed = app.get_ok("/v1/conversations").await;
    assert_eq!(listed["data"][0]["title"], "Trip to Lisbon");

    // An empty title (or null) leaves it untitled.
    for empty in [json!(""), json!("   "), json!(null)] {
        let response = rename(&app, &id, &json!({ "title": empty })).await;
        assert_eq!(response.status(), StatusCode::OK);
        let untitled: Value = response.json().await.unwrap();
        assert_eq!(untitled["title"], Value::Null, "title {empty}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_bad_rename_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({ "title": "kept" })).await);

    let too_long = rename(&app, &id, &json!({ "title": "x".repeat(513) })).await;
    let error = assert_error(too_long, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    assert_eq!(error["param"], "title");
    let unknown_field = rename(&app, &id, &json!({ "title": "t", "model": "m" })).await;
    assert_error(
        unknown_field,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    )
    .await;
    let not_a_string = rename(&app, &id, &json!({ "title": 7 })).await;
    assert_error(
        not_a_string,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    )
    .await;
    let missing = format!("conv_{}", uuid::Uuid::now_v7().simple());
    let response = rename(&app, &missing, &json!({ "title": "t" })).await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;

    let conversation = app.get_ok(&format!("/v1/conversations/{id}")).await;
    assert_eq!(conversation["title"], "kept");
    app.stop().await;
}
