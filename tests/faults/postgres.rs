//! Postgres crashing and restarting while jobs run and messages are sent (each scenario runs a
//! cluster of its own, so the shared server is never touched).

use std::time::{Duration, Instant};

use chatq_mock_llm::MockConfig;

use crate::harness::{Stack, StackOptions};
use crate::ledger::settle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_nothing() {
    restart_while_jobs_run("postgres_restart", false).await;
}

/// The same behind PgBouncer in transaction mode: the pooler loses its server sessions in the
/// crash, and every chatq connection's transaction in flight with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_behind_pgbouncer_loses_nothing() {
    restart_while_jobs_run("postgres_restart_pooled", true).await;
}

/// Crashes Postgres while 300 messages are sent and answered, and checks the ledger once it is
/// back: every accepted job ran once and succeeded.
async fn restart_while_jobs_run(name: &str, through_pgbouncer: bool) {
    const JOBS: usize = 300;
    let stack = Stack::start(
        name,
        StackOptions {
            through_pgbouncer,
            workers: 2,
            worker_concurrency: 16,
            mock: MockConfig {
                ttft_ms: 200,
                tokens: 8,
                token_delay_ms: 40,
                ..MockConfig::default()
            },
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let client = stack.client.clone();
    // Sends during the outage get 503 and are retried with the same idempotency key.
    let load = tokio::spawn(async move { client.send_to_each(&conversations, 16).await });

    stack
        .wait_until("jobs are flowing", Duration::from_secs(60), || async {
            stack.count_status("succeeded").await >= 40
        })
        .await;
    stack
        .postgres
        .crash_and_restart(Duration::from_secs(2))
        .await;
    let restarted_at = Instant::now();

    let accepted = load.await.unwrap();
    let report = settle(&stack, &accepted, 1, restarted_at, Duration::from_secs(120)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    stack.stop().await;
}
