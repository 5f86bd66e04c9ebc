//! The cache on conversation turns, and negative feedback evicting a cached reply.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{answer_with, provider_calls};
use crate::helpers::{TestApp, id_of, messages_path, spawn_app};

/// A deterministic first turn in a new conversation; returns the finished job.
async fn first_turn(app: &TestApp, content: &str, extra: Value) -> Value {
    let conversation = id_of(&app.create_conversation(json!({})).await);
    let mut body = json!({ "content": content, "temperature": 0 });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    let accepted: Value = app
        .request(Method::POST, &messages_path(&conversation))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.wait_for_job(accepted["job"]["id"].as_str().unwrap())
        .await
}

#[tokio::test]
async fn cache_the_same_first_turn_in_another_conversation_is_served_from_the_cache() {
    let app = spawn_app().await;
    answer_with(&app, "hello there");
    let first = first_turn(&app, "hi", json!({})).await;
    assert_eq!(first["reply"]["cached"], false);
    answer_with(&app, "something else");
    let second = first_turn(&app, "hi", json!({})).await;
    assert_eq!(second["status"], "succeeded");
    assert_eq!(second["reply"]["cached"], true);
    assert_eq!(second["reply"]["content"], "hello there");
    assert_eq!(provider_calls(&app), 1);
    // The cached reply is stored in its conversation like any other.
    let history = app
        .history(second["conversation_id"].as_str().unwrap())
        .await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["content"], "hello there");

    // Opted out by body or by header: the provider is asked.
    let opted_out = first_turn(&app, "hi", json!({ "cache": false })).await;
    assert_eq!(opted_out["reply"]["cached"], false);
    assert_eq!(opted_out["reply"]["content"], "something else");
    let conversation = id_of(&app.create_conversation(json!({})).await);
    let accepted: Value = app
        .request(Method::POST, &messages_path(&conversation))
        .header("Cache-Control", "no-cache")
        .json(&json!({ "content": "hi", "temperature": 0 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by_header = app
        .wait_for_job(accepted["job"]["id"].as_str().unwrap())
        .await;
    assert_eq!(by_header["reply"]["cached"], false);
    assert_eq!(provider_calls(&app), 3);
    // A sampled turn is never cached.
    let sampled = first_turn(&app, "hi", json!({ "temperature": 1 })).await;
    assert_eq!(sampled["reply"]["cached"], false);
    assert_eq!(provider_calls(&app), 4);
    app.stop().await;
}

#[tokio::test]
async fn cache_negative_feedback_on_a_cached_reply_evicts_it() {
    let app = spawn_app().await;
    answer_with(&app, "a poor answer");
    first_turn(&app, "rate this", json!({})).await;
    let cached = first_turn(&app, "rate this", json!({})).await;
    assert_eq!(cached["reply"]["cached"], true);
    let message = cached["reply"]["message_id"].as_str().unwrap();

    // A good rating keeps it.
    let liked = app
        .post_json(
            &format!("/v1/messages/{message}/feedback"),
            &json!({ "rating": 1 }),
        )
        .await;
    assert_eq!(liked.status(), StatusCode::CREATED);
    let still = first_turn(&app, "rate this", json!({})).await;
    assert_eq!(still["reply"]["cached"], true);

    let disliked = app
        .post_json(
            &format!("/v1/messages/{message}/feedback"),
            &json!({ "rating": -1, "comment": "wrong" }),
        )
        .await;
    assert_eq!(disliked.status(), StatusCode::CREATED);
    answer_with(&app, "a better answer");
    let fresh = first_turn(&app, "rate this", json!({})).await;
    assert_eq!(fresh["reply"]["cached"], false);
    assert_eq!(fresh["reply"]["content"], "a better answer");
    assert_eq!(provider_calls(&app), 2);
    // The fresh reply is cached in its place.
    let next = first_turn(&app, "rate this", json!({})).await;
    assert_eq!(
        (
            next["reply"]["cached"].clone(),
            next["reply"]["content"].clone()
        ),
        (json!(true), json!("a better answer"))
    );
    app.stop().await;
}
