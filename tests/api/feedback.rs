//! Feedback on replies: one rating per message, replaced when given again.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, id_of, spawn_app};

fn feedback_path(message: &str) -> String {
    format!("/v1/messages/{message}/feedback")
}

/// The feedback rows stored for a message: (rating, comment).
async fn stored_feedback(app: &TestApp, message: &str) -> Vec<(i16, Option<String>)> {
    let uuid = uuid::Uuid::parse_str(message.trim_start_matches("msg_")).unwrap();
    sqlx::query_as("SELECT rating, comment FROM feedback WHERE message_id = $1")
        .bind(uuid)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_feedback_on_a_reply_can_be_read_back() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let job = app.turn(&id, "rate me").await;
    let reply = job["reply"]["message_id"].as_str().unwrap().to_owned();

    let none_yet = app.get(&feedback_path(&reply)).await;
    assert_error(none_yet, StatusCode::NOT_FOUND, "not_found_error").await;

    let saved = app
        .post_json(
            &feedback_path(&reply),
            &json!({ "rating": -1, "comment": "too long" }),
        )
        .await;
    assert_eq!(saved.status(), StatusCode::CREATED);
    let saved: Value = saved.json().await.unwrap();
    let read = app.get_ok(&feedback_path(&reply)).await;
    assert_eq!(read, saved);
    assert_eq!(read["object"], "feedback");
    assert_eq!(read["rating"], -1);
    assert_eq!(read["comment"], "too long");
    app.stop().await;
}

#[tokio::test]
async fn feedback_given_twice_on_a_reply_keeps_only_the_second() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let job = app.turn(&id, "rate me").await;
    let reply = job["reply"]["message_id"].as_str().unwrap().to_owned();

    let first = app
        .post_json(
            &feedback_path(&reply),
            &json!({ "rating": 1, "comment": "nice" }),
        )
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["message_id"], reply.as_str());
    assert_eq!(first["rating"], 1);
    assert_eq!(
        stored_feedback(&app, &reply).await,
        [(1, Some("nice".to_owned()))]
    );

    let second = app
        .post_json(
            &feedback_path(&reply),
            &json!({ "rating": -1, "comment": "on reflection, wrong" }),
        )
        .await;
    assert_eq!(second.status(), StatusCode::CREATED);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["rating"], -1);
    assert_eq!(second["comment"], "on reflection, wrong");
    assert_eq!(
        stored_feedback(&app, &reply).await,
        [(-1, Some("on reflection, wrong".to_owned()))]
    );

    // Without a comment, the old comment does not linger.
    let third = app
        .post_json(&feedback_path(&reply), &json!({ "rating": 1 }))
        .await;
    assert_eq!(third.status(), StatusCode::CREATED);
    assert_eq!(stored_feedback(&app, &reply).await, [(1, None)]);
    app.stop().await;
}

#[tokio::test]
async fn feedback_on_a_user_message_or_with_a_bad_rating_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let job = app.turn(&id, "rate me").await;
    let reply = job["reply"]["message_id"].as_str().unwrap().to_owned();
    let question = id_of(&app.history(&id).await[0]);
    let saved = app
        .post_json(
            &feedback_path(&reply),
            &json!({ "rating": 1, "comment": "kept" }),
        )
        .await;
    assert_eq!(saved.status(), StatusCode::CREATED);
    let before = app.row_counts().await;

    let on_question = app
        .post_json(&feedback_path(&question), &json!({ "rating": 1 }))
        .await;
    assert_error(
        on_question,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    )
    .await;
    assert!(stored_feedback(&app, &question).await.is_empty());

    for rating in [json!(0), json!(2), json!(-2), json!("1"), json!(null)] {
        let response = app
            .post_json(
                &feedback_path(&reply),
                &json!({ "rating": rating, "comment": "x" }),
            )
            .await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
        assert_eq!(error["param"], "rating", "rating {rating}");
    }
    let missing = app
        .post_json(&feedback_path(&reply), &json!({ "comment": "x" }))
        .await;
    let error = assert_error(missing, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    assert_eq!(error["param"], "rating");

    let unknown = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let response = app
        .post_json(&feedback_path(&unknown), &json!({ "rating": 1 }))
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;

    assert_eq!(app.row_counts().await, before);
    assert_eq!(
        stored_feedback(&app, &reply).await,
        [(1, Some("kept".to_owned()))]
    );
    app.stop().await;
}
