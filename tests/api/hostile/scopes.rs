//! Key scopes: a tenant's admin key sees and retries its own tenant's dead letters only; an
//! operator key sees the fleet. A revoked key stops working on every ingress within a second, and
//! an expired key at once, whatever the key cache holds.

use std::time::Duration;

use chatq_common::db::keys::{KeyScope, create_key};
use chatq_mock_llm::{Fault, MockConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestOptions, id_of, spawn_app_with};

/// A failed job of the tenant `key` belongs to; returns its id.
async fn failed_job(app: &TestApp, key: &str) -> String {
    let conversation: Value = app
        .request_as(key, Method::POST, "/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let accepted: Value = app
        .request_as(
            key,
            Method::POST,
            &format!("/v1/conversations/{}/messages", id_of(&conversation)),
        )
        .json(&json!({ "content": "this cannot work" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = app
        .wait_for_job_as(key, accepted["job"]["id"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    id_of(&job)
}

async fn dead_letter_ids(app: &TestApp, key: &str) -> Vec<String> {
    let page: Value = app
        .request_as(key, Method::GET, "/v1/admin/dead-letters")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<String> = page["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|dead| dead["job_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn status_of(app: &TestApp, key: &str, method: Method, path: &str) -> StatusCode {
    app.request_as(key, method, path)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_tenant_admin_sees_its_own_dead_letters_and_an_operator_the_fleet() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            fault: Some(Fault::Status { status: 400 }),
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let admin_a = create_key(&app.pool, "tenant-a", KeyScope::Admin, None)
        .await
        .unwrap()
        .plaintext;
    let tenant_b = app.other_tenant_key("tenant-b").await;
    let operator = app.admin_key().await;
    let ours = failed_job(&app, &app.key).await;
    let theirs = failed_job(&app, &tenant_b).await;

    assert_eq!(
        dead_letter_ids(&app, &admin_a).await,
        std::slice::from_ref(&ours)
    );
    let mut both = vec![ours.clone(), theirs.clone()];
    both.sort();
    assert_eq!(dead_letter_ids(&app, &operator).await, both);
    // Another tenant's dead letter does not exist for a tenant admin.
    let retry = |job: &str| format!("/v1/admin/dead-letters/{job}/retry");
    assert_eq!(
        status_of(&app, &admin_a, Method::POST, &retry(&theirs)).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&app, &admin_a, Method::POST, &retry(&ours)).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&app, &operator, Method::POST, &retry(&theirs)).await,
        StatusCode::OK
    );
    // The fleet is the operator's only; a tenant key sees no dead letters at all.
    for path in ["/v1/admin/queue", "/v1/admin/workers"] {
        assert_eq!(
            status_of(&app, &admin_a, Method::GET, path).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_of(&app, &operator, Method::GET, path).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        status_of(&app, &app.key, Method::GET, "/v1/admin/dead-letters").await,
        StatusCode::FORBIDDEN
    );
    app.stop().await;
}

/// Runs `chatq keys …` against the test's database and namespace; returns standard output.
async fn chatq_keys(app: &TestApp, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatq"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CHATQ_") {
            command.env_remove(name);
        }
    }
    let output = command
        .arg("keys")
        .args(args)
        .env(
            "CHATQ_DATABASE_URL",
            crate::helpers::database_url(&app.database),
        )
        .env("CHATQ_NATS_URL", crate::helpers::nats_url())
        .env("CHATQ_NAMESPACE", app.settings.nats.namespace.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "chatq keys {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_a_second_and_is_listed_as_revoked() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    let key = chatq_keys(&app, &["create", "--tenant", "leaving"]).await;
    let key = key.trim();
    // Known to the ingress, and so cached for 30 s.
    assert_eq!(
        status_of(&app, key, Method::GET, "/v1/conversations").await,
        StatusCode::OK
    );
    let listed = chatq_keys(&app, &["list", "--tenant", "leaving"]).await;
    let line = listed.lines().nth(1).unwrap_or_else(|| panic!("{listed}"));
    let key_id = line.split('\t').next().unwrap();
    assert!(
        key.starts_with(line.split('\t').nth(2).unwrap()),
        "{listed}"
    );
    assert!(
        !listed.contains(key),
        "a listing never shows a key: {listed}"
    );

    chatq_keys(&app, &["revoke", key_id]).await;
    let revoked_at = tokio::time::Instant::now();
    loop {
        let status = status_of(&app, key, Method::GET, "/v1/conversations").await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "the revoked key still works after a second: {status}"
        );
    }
    let listed = chatq_keys(&app, &["list", "--tenant", "leaving"]).await;
    let line = listed.lines().nth(1).unwrap();
    assert_ne!(
        line.split('\t').nth(6),
        Some("-"),
        "listed as revoked: {listed}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_key_stops_working_even_while_cached() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    let expires_at = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let key = create_key(&app.pool, "brief", KeyScope::Tenant, Some(expires_at))
        .await
        .unwrap()
        .plaintext;
    assert_eq!(
        status_of(&app, &key, Method::GET, "/v1/conversations").await,
        StatusCode::OK
    );
    loop {
        let status = status_of(&app, &key, Method::GET, "/v1/conversations").await;
        let now = time::OffsetDateTime::now_utc();
        if status == StatusCode::UNAUTHORIZED {
            assert!(now >= expires_at, "refused before it expired");
            break;
        }
        assert!(
            now < expires_at + time::Duration::milliseconds(500),
            "the key still works after it expired: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let expired = create_key(&app.pool, "brief", KeyScope::Tenant, Some(past))
        .await
        .unwrap()
        .plaintext;
    assert_eq!(
        status_of(&app, &expired, Method::GET, "/v1/conversations").await,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}
