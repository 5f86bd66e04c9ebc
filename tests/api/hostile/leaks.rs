//! What a provider says, and where it lives, stays with the operator: tenants read a stable error
//! type and message on their job; the logs name the provider and the servers with every
//! credential redacted.

use std::process::Stdio;
use std::time::Duration;

use chatq_mock_llm::{Fault, MockConfig};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{
    TestOptions, create_database, database_url, id_of, nats_url, spawn_app_with, unique,
};

const PASSWORD: &str = "hunter2-provider";

#[tokio::test]
async fn a_failed_job_tells_its_tenant_what_happened_without_the_providers_words() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            fault: Some(Fault::Status { status: 400 }),
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let job = app.turn(&id, "this cannot work").await;
    assert_eq!(job["error"]["type"], "provider_rejected", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("HTTP 400"), "{job}");
    assert!(
        !message.contains("fault injected"),
        "the provider's error body is not passed on: {job}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_provider_is_reported_without_its_address_or_credentials() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(TestOptions {
        settings: Box::new(move |s| {
            s.provider.base_url = Some(format!("http://chatq:{PASSWORD}@127.0.0.1:{closed}/v1"));
            s.nats.job_max_attempts = 1;
        }),
        ..TestOptions::default()
    })
    .await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let job = app.turn(&id, "anyone there?").await;
    assert_eq!(job["error"]["type"], "provider_unreachable", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains(PASSWORD) && !message.contains(&closed.to_string()),
        "the tenant sees neither the provider's address nor its credentials: {job}"
    );
    app.stop().await;
}

#[tokio::test]
async fn chatq_serve_logs_no_credential_of_any_url() {
    let database = unique("chatq_t_");
    create_database(&database).await;
    let namespace = unique("cqt");
    let secrets = ["db-query-secret", PASSWORD, "sk-in-query"];
    let env = [
        (
            "CHATQ_DATABASE_URL",
            format!("{}?password={}", database_url(&database), secrets[0]),
        ),
        (
            "CHATQ_PROVIDER_BASE_URL",
            format!(
                "http://chatq:{}@127.0.0.1:9/v1?api_key={}",
                secrets[1], secrets[2]
            ),
        ),
        ("CHATQ_PROVIDER", "openai".into()),
        ("CHATQ_MODEL", "m".into()),
        ("CHATQ_NATS_URL", nats_url()),
        ("CHATQ_NAMESPACE", namespace.clone()),
        // JetStream reserves a stream's bytes up front; many tests at once must fit.
        ("CHATQ_EVENTS_MAX_BYTES", "16777216".into()),
        ("CHATQ_HTTP_ADDR", "127.0.0.1:0".into()),
        ("CHATQ_LOG", "info".into()),
    ];
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatq"));
    serve.arg("serve");
    for (name, _) in std::env::vars() {
        if name.starts_with("CHATQ_") {
            serve.env_remove(name);
        }
    }
    let mut child = serve
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    // Until the worker has described its provider and the ingress listens: every URL is logged.
    let read = async {
        let (mut described, mut listening) = (false, false);
        while let Some(line) = lines.next_line().await.unwrap() {
            described |= line.contains("worker pulling jobs");
            listening |= line.contains("ingress listening");
            log.push(line);
            if described && listening {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("chatq serve did not start: {log:#?}"));
    child.kill().await.unwrap();
    let log = log.join("\n");
    assert!(log.contains("127.0.0.1:9"), "the provider is named: {log}");
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&crate::helpers::admin_database_url())
            .await
            .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}
