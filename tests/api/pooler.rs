//! `chatq migrate` behind PgBouncer in transaction mode, the pooler many-process deployments put
//! in front of Postgres: each transaction may run on another server connection, so a session
//! advisory lock (sqlx's migration lock) could be taken on one and released on another.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{
    PgBouncer, admin_database_url, create_database, database_url, host_and_port, unique,
};

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
    let locks: i64 = sqlx::query_scalar(
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
