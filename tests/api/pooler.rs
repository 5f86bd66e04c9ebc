//! chatq behind PgBouncer in transaction mode, the pooler many-process deployments put in front
//! of Postgres: each transaction may run on another server connection, so nothing chatq does
//! may depend on a session (prepared statements, session advisory locks, `LISTEN`). The whole
//! API suite runs this way with `CQTEST_THROUGH_POOLER=1`; these tests always do.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    PgBouncer, TestOptions, admin_database_url, create_database, database_url, host_and_port,
    id_of, messages_path, spawn_app_with, unique,
};

fn through_pooler() -> TestOptions {
    TestOptions {
        workers: 2,
        through_pooler: true,
        ..TestOptions::default()
    }
}

#[tokio::test]
async fn conversations_run_through_pgbouncer() {
    let app = spawn_app_with(through_pooler()).await;
    // Many at once, so the pooler hands each transaction whichever server connection is free.
    let conversations: Vec<String> = futures::stream::iter(0..40)
        .map(|i| {
            let app = &app;
            async move {
                let conversation = id_of(
                    &app.create_conversation(json!({ "title": format!("pooled {i}") }))
                        .await,
                );
                for turn in 0..2 {
                    let job = app.turn(&conversation, &format!("turn {turn}")).await;
                    assert_eq!(job["status"], "succeeded", "{job}");
                }
                conversation
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for conversation in &conversations {
        let history = app.history(conversation).await;
        let roles: Vec<&str> = history
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    }
    app.stop().await;
}

#[tokio::test]
async fn idempotent_sends_and_chat_completions_run_through_pgbouncer() {
    let app = spawn_app_with(through_pooler()).await;
    let conversation = id_of(&app.create_conversation(json!({})).await);
    let send = || {
        app.request(Method::POST, &messages_path(&conversation))
            .header("idempotency-key", "pooled-once")
            .json(&json!({ "content": "only once" }))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(again["job"]["id"], first["job"]["id"]);
    let job = app
        .wait_for_job(first["job"]["id"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let response = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&json!({
            "model": "mock-model",
            "messages": [{ "role": "user", "content": "hello through the pooler" }],
        }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    app.stop().await;
}

/// `chatq migrate` as a separate process, against `database_url`, through a transaction pooler
/// or not.
fn migrate(database_url: &str, pooled: bool) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatq"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CHATQ_") {
            command.env_remove(name);
        }
    }
    command
        .arg("migrate")
        .env("CHATQ_DATABASE_URL", database_url)
        .env(
            "CHATQ_DATABASE_POOLER",
            if pooled { "transaction" } else { "none" },
        )
        .env("CHATQ_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chatq starts")
}

#[tokio::test]
async fn replicas_migrating_at_once_through_pgbouncer_apply_each_migration_once() {
    let (host, port) = host_and_port(&admin_database_url());
    let pooler = PgBouncer::start((host.as_str(), port)).await;
    let database = unique("chatq_t_");
    let direct = database_url(&database);
    let pooled = pooler.url_for(&direct);
    // Six replicas start at once on an empty database: four through the pooler, two straight to
    // Postgres.
    create_database(&database).await;
    let replicas: Vec<tokio::process::Child> = (0..6)
        .map(|i| {
            if i < 4 {
                migrate(&pooled, true)
            } else {
                migrate(&direct, false)
            }
        })
        .collect();
    for replica in replicas {
        let output = tokio::time::timeout(Duration::from_secs(60), replica.wait_with_output())
            .await
            .expect("chatq migrate finishes within a minute")
            .unwrap();
        assert!(
            output.status.success(),
            "chatq migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let pool = sqlx::PgPool::connect(&direct).await.unwrap();
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected: Vec<i64> = chatq_common::db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .collect();
    let mut counts = BTreeMap::new();
    for (version, success) in &applied {
        assert!(success, "migration {version} is marked failed");
        *counts.entry(*version).or_insert(0) += 1;
    }
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), expected);
    assert!(counts.values().all(|n| *n == 1), "{applied:?}");
    // No advisory lock is left behind on any server connection.
    let locks: i64 =
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
              WHERE l.locktype = 'advisory' AND d.datname = current_database()",
        )
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(locks, 0, "an advisory lock outlived chatq migrate");
    // And once more, through the pooler, with everything applied: nothing to do.
    let again = migrate(&pooled, true).wait_with_output().await.unwrap();
    assert!(again.status.success());
    pool.close().await;
    drop(pooler);
}
