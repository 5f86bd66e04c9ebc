//! Tenancy and authentication: a key sees only its tenant's data, and everything else is 404;
//! a request without a valid key is 401. The matrix below holds every route that takes an id
//! (conversation, message, job, feedback, dead letter).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use chatq_common::db::keys::{KeyScope, create_key};
use chatq_mock_llm::{Fault, MockConfig};

use crate::helpers::{TestApp, assert_error, id_of, messages_path, spawn_app};

/// Everything another tenant could try on a conversation, its reply and its job, and (with an
/// admin key of its own tenant) on a failed job.
fn requests_on(
    conversation: &str,
    reply: &str,
    job: &str,
    failed: &str,
) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::GET,
            format!("/v1/conversations/{conversation}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/conversations/{conversation}"),
            Some(json!({ "title": "mine now" })),
        ),
        (
            Method::DELETE,
            format!("/v1/conversations/{conversation}"),
            None,
        ),
        (Method::GET, messages_path(conversation), None),
        (
            Method::GET,
            format!("{}?limit=1&before=2", messages_path(conversation)),
            None,
        ),
        (Method::DELETE, messages_path(conversation), None),
        (
            Method::POST,
            messages_path(conversation),
            Some(json!({ "content": "mine now" })),
        ),
        (
            Method::POST,
            format!("/v1/messages/{reply}/feedback"),
            Some(json!({ "rating": -1 })),
        ),
        (Method::GET, format!("/v1/messages/{reply}/feedback"), None),
        (Method::GET, format!("/v1/jobs/{job}"), None),
        (Method::GET, format!("/v1/jobs/{job}?wait=1"), None),
        (Method::GET, format!("/v1/jobs/{job}/events"), None),
        (Method::POST, format!("/v1/jobs/{job}/cancel"), None),
        (Method::GET, format!("/v1/jobs/{failed}"), None),
        (Method::POST, format!("/v1/jobs/{failed}/cancel"), None),
        (
            Method::POST,
            format!("/v1/admin/dead-letters/{failed}/retry"),
            None,
        ),
    ]
}

/// What tenant B can see of its own data, to check that nothing changed.
async fn seen_by(app: &TestApp, key: &str, conversation: &str, job: &str) -> (Value, Value, Value) {
    let get = |path: String| async move {
        let response = app
            .request_as(key, Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let mut body: Value = response.json().await.unwrap();
        body.as_object_mut().map(|o| o.remove("last_activity_at"));
        body
    };
    (
        get(format!("/v1/conversations/{conversation}")).await,
        get(messages_path(conversation)).await,
        get(format!("/v1/jobs/{job}")).await,
    )
}

#[tokio::test]
async fn another_tenants_conversation_message_and_job_do_not_exist_for_you() {
    let app = spawn_app().await;
    let other_key = app.other_tenant_key("tenant-b").await;
    let created = app
        .request_as(&other_key, Method::POST, "/v1/conversations")
        .json(&json!({ "title": "private" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let theirs = id_of(&created.json().await.unwrap());
    let accepted: Value = app
        .request_as(&other_key, Method::POST, &messages_path(&theirs))
        .json(&json!({ "content": "secret" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = id_of(&accepted["job"]);
    let finished = app.wait_for_job_as(&other_key, &job).await;
    let reply = finished["reply"]["message_id"].as_str().unwrap().to_owned();
    let rated = app
        .request_as(
            &other_key,
            Method::POST,
            &format!("/v1/messages/{reply}/feedback"),
        )
        .json(&json!({ "rating": 1, "comment": "private" }))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), StatusCode::CREATED);
    // A dead letter of theirs: a turn the provider refuses.
    app.mock.set_config(MockConfig {
        fault: Some(Fault::Status { status: 400 }),
        ..MockConfig::default()
    });
    let second: Value = app
        .request_as(&other_key, Method::POST, "/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused: Value = app
        .request_as(&other_key, Method::POST, &messages_path(&id_of(&second)))
        .json(&json!({ "content": "secret" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failed = id_of(&refused["job"]);
    assert_eq!(
        app.wait_for_job_as(&other_key, &failed).await["status"],
        "failed"
    );
    // Our tenant's admin key: it may do more than a tenant key, and still sees none of theirs.
    let our_admin = create_key(&app.pool, "tenant-a", KeyScope::Admin, None)
        .await
        .unwrap()
        .plaintext;
    let dead: Value = app
        .request_as(&our_admin, Method::GET, "/v1/admin/dead-letters")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dead["data"], json!([]), "{dead}");

    let before = app.row_counts().await;
    let seen_before = seen_by(&app, &other_key, &theirs, &job).await;
    for (method, path, body) in requests_on(&theirs, &reply, &job, &failed) {
        let mut request = app.request_as(&our_admin, method.clone(), &path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let error = assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
        let message = error["message"].as_str().unwrap();
        assert!(
            !message.contains("secret") && !message.contains("private"),
            "{method} {path}: {error}"
        );
    }
    assert_eq!(app.row_counts().await, before);
    assert_eq!(seen_by(&app, &other_key, &theirs, &job).await, seen_before);
    let still_failed: Value = app
        .request_as(&other_key, Method::GET, &format!("/v1/jobs/{failed}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(still_failed["status"], "failed", "{still_failed}");

    // Listings hold only the caller's own conversations.
    let mine = id_of(&app.create_conversation(json!({ "title": "mine" })).await);
    let listed: Vec<Value> = app.get_ok("/v1/conversations").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(listed, [json!(mine)]);
    let theirs_listed: Value = app
        .request_as(&other_key, Method::GET, "/v1/conversations")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let theirs_listed: Vec<&Value> = theirs_listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(theirs_listed, [&json!(id_of(&second)), &json!(theirs)]);
    app.stop().await;
}

#[tokio::test]
async fn requests_without_a_valid_key_are_unauthenticated() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let unknown_key = format!("cq_{}", "0123456789abcdef".repeat(3));
    let headers: [(&str, Option<String>); 7] = [
        ("missing", None),
        ("malformed", Some("Bearer not-a-key".into())),
        (
            "well formed but unknown",
            Some(format!("Bearer {unknown_key}")),
        ),
        ("not Bearer", Some(format!("Basic {}", app.key))),
        ("key without a scheme", Some(app.key.clone())),
        ("empty Bearer", Some("Bearer ".into())),
        (
            "revoked-looking garbage",
            Some(format!("Bearer {}x", app.key)),
        ),
    ];
    let before = app.row_counts().await;
    for (what, header) in headers {
        for (method, path, body) in [
            (Method::GET, "/v1/conversations".to_owned(), None),
            (
                Method::POST,
                "/v1/conversations".to_owned(),
                Some(json!({})),
            ),
            (
                Method::POST,
                messages_path(&id),
                Some(json!({ "content": "hi" })),
            ),
        ] {
            let mut request = app.http.request(method.clone(), app.url(&path));
            if let Some(header) = &header {
                request = request.header("Authorization", header);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let error =
                assert_error(response, StatusCode::UNAUTHORIZED, "authentication_error").await;
            assert!(
                !error["message"].as_str().unwrap().contains(&app.key),
                "{what}: the key is echoed: {error}"
            );
        }
    }
    assert_eq!(app.row_counts().await, before);
    // The real key works, so the 401s above were about the keys.
    app.get_ok("/v1/conversations").await;
    app.stop().await;
}
