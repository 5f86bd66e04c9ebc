//! The IDOR matrix, drawn from the API's own document: for every operation in `/openapi.json`
//! whose path names an id, another tenant's id of that kind is 404, and changes nothing. A new
//! route is in the matrix as soon as it is served; an id of a kind this test cannot make yet
//! fails it, naming the kind.

use std::collections::BTreeMap;

use chatq_common::db::keys::{KeyScope, create_key};
use chatq_mock_llm::{Fault, MockConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::batches::{create_batch, jsonl, request_line, upload};
use crate::helpers::{TestApp, TestOptions, assert_error, id_of, messages_path, spawn_app_with};

/// One of each kind of thing a path can name, owned by the test's tenant (A): id prefix → id.
async fn one_of_each(app: &TestApp) -> BTreeMap<&'static str, String> {
    let conversation = id_of(&app.create_conversation(json!({ "title": "private" })).await);
    let job = app.turn(&conversation, "secret").await;
    let reply = job["reply"]["message_id"].as_str().unwrap().to_owned();
    let rated = app
        .post_json(
            &format!("/v1/messages/{reply}/feedback"),
            &json!({ "rating": 1, "comment": "private" }),
        )
        .await;
    assert_eq!(rated.status(), StatusCode::CREATED);
    let file = upload(app, &jsonl(&[request_line("a")])).await;
    let batch = id_of(&create_batch(app, &file, "24h").await);
    let response: Value = app
        .post_json(
            "/v1/responses",
            &json!({ "model": "mock-model", "input": "secret", "background": true }),
        )
        .await
        .json()
        .await
        .unwrap();
    // A dead letter: a turn the provider refuses.
    app.mock.set_config(MockConfig {
        fault: Some(Fault::Status { status: 400 }),
        ..MockConfig::default()
    });
    let second = id_of(&app.create_conversation(json!({})).await);
    let refused: Value = app
        .post_json(&messages_path(&second), &json!({ "content": "secret" }))
        .await
        .json()
        .await
        .unwrap();
    let failed = id_of(&refused["job"]);
    assert_eq!(app.wait_for_job(&failed).await["status"], "failed");
    app.mock.set_config(MockConfig::default());
    let webhook: Value = app
        .post_json(
            "/v1/webhooks",
            &json!({ "url": "http://127.0.0.1:9/private", "events": ["job.*"] }),
        )
        .await
        .json()
        .await
        .unwrap();

    BTreeMap::from([
        ("conv", conversation),
        ("msg", reply),
        ("job", failed),
        ("file", file),
        ("batch", batch),
        ("resp", id_of(&response)),
        ("wh", id_of(&webhook)),
    ])
}

/// A body that passes each operation's validation, so only the id decides the answer.
fn body_for(method: &Method, path: &str) -> Option<Value> {
    match (method.as_str(), path) {
        ("POST", "/v1/conversations/{id}/messages") => Some(json!({ "content": "mine now" })),
        ("PATCH", "/v1/conversations/{id}") => Some(json!({ "title": "mine now" })),
        ("POST", "/v1/messages/{id}/feedback") => Some(json!({ "rating": -1 })),
        _ => None,
    }
}

/// The id kind (its prefix) a path parameter takes, from the document's pattern
/// (`^conv_[0-9a-fA-F]{32}$`), following a `$ref` to the id's component.
fn id_kind<'a>(document: &'a Value, parameter: &'a Value) -> Option<&'a str> {
    let mut schema = &parameter["schema"];
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next()?;
        schema = &document["components"]["schemas"][name];
    }
    let pattern = schema["pattern"].as_str()?;
    pattern.strip_prefix('^')?.split('_').next()
}

#[tokio::test]
async fn every_operation_that_names_an_id_is_404_for_another_tenants_id() {
    let app = spawn_app_with(TestOptions {
        // The webhook endpoint of tenant A points at this machine.
        settings: Box::new(|settings| settings.webhooks.allow_private_targets = true),
        ..TestOptions::default()
    })
    .await;
    let document: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ours = one_of_each(&app).await;
    // The other tenant asks with an admin key of its own: it may do more than a tenant key (its
    // dead letters), and so meets every route's tenant check rather than a scope check.
    let theirs = create_key(&app.pool, "tenant-b", KeyScope::Admin, None)
        .await
        .unwrap()
        .plaintext;

    let before = app.row_counts().await;
    let mut tried = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let mut concrete = path.clone();
            let mut shared = false;
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] != "path" {
                    continue;
                }
                let name = parameter["name"].as_str().unwrap();
                // A path parameter that is no id names something every tenant shares (a model).
                let Some(kind) = id_kind(&document, parameter) else {
                    shared = true;
                    continue;
                };
                let id = ours.get(kind).unwrap_or_else(|| {
                    panic!("{method} {path}: make a '{kind}_' id of tenant A in one_of_each")
                });
                concrete = concrete.replace(&format!("{{{name}}}"), id);
            }
            if shared {
                continue;
            }
            if concrete == *path {
                continue;
            }
            tried += 1;
            let mut request = app.request_as(&theirs, method.clone(), &concrete);
            if let Some(body) = body_for(&method, path) {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let error = assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
            let message = error["message"].as_str().unwrap();
            assert!(
                !message.contains("secret") && !message.contains("private"),
                "{method} {concrete}: {error}"
            );
        }
    }
    assert!(tried >= 20, "only {tried} operations name an id");
    assert_eq!(app.row_counts().await, before, "a refused request wrote");

    // Everything of ours is as it was: not deleted, cancelled or cleared.
    let conversation = app
        .get_ok(&format!("/v1/conversations/{}", ours["conv"]))
        .await;
    assert_eq!(conversation["title"], "private");
    assert_eq!(app.history(&ours["conv"]).await.len(), 2);
    let batch = app.get_ok(&format!("/v1/batches/{}", ours["batch"])).await;
    assert!(
        !["cancelling", "cancelled"].contains(&batch["status"].as_str().unwrap()),
        "{batch}"
    );
    app.get_ok(&format!("/v1/files/{}", ours["file"])).await;
    let response = app.get_ok(&format!("/v1/responses/{}", ours["resp"])).await;
    assert_ne!(response["status"], "cancelled", "{response}");
    let feedback = app
        .get_ok(&format!("/v1/messages/{}/feedback", ours["msg"]))
        .await;
    assert_eq!(feedback["rating"], 1);
    assert_eq!(
        app.get_ok(&format!("/v1/jobs/{}", ours["job"])).await["status"],
        "failed"
    );
    app.get_ok(&format!("/v1/webhooks/{}", ours["wh"])).await;
    app.stop().await;
}
