//! A worker keeps an eighth of its slots for the front of the interactive lane: while the jobs
//! behind it (a tenant over its fair share in the overflow, a batch in its lane) would take every
//! slot with long provider calls, another tenant's job at the front still starts at once, not
//! when one of those calls ends. Both are pulled by the same rule; the test floods the batch
//! lane, whose jobs, unlike a flood's, never go to the front themselves.

use std::time::{Duration, Instant};

use chatq_mock_llm::MockConfig;

use super::{conversations_of, send_turn, tenant_id};
use crate::helpers::{TestApp, TestOptions, spawn_app_with};
use crate::lanes::queue_batch_jobs;

/// Each provider call takes this long: far longer than a job at the front may wait.
const LONG_CALL_MS: u64 = 5_000;
/// The worker's slots; an eighth of them, one, is kept for the front.
const SLOTS: usize = 8;

/// Jobs of `tenant` with `status`.
async fn count(app: &TestApp, tenant: &str, status: &str) -> i64 {
    let tenant = tenant_id(app, tenant).await;
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE tenant_id = $1 AND status = $2")
        .bind(tenant.as_uuid())
        .bind(status)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_at_the_front_starts_while_a_batch_holds_every_other_slot() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: LONG_CALL_MS,
            tokens: 1,
            ..MockConfig::default()
        },
        settings: Box::new(|s| s.worker.concurrency = SLOTS),
        ..TestOptions::default()
    })
    .await;
    let other = app.other_tenant_key("tenant-b").await;
    let b_conversation = conversations_of(&app, "tenant-b", 1).await.remove(0);

    // A's batch: more jobs than there are slots.
    let a = app.tenant("tenant-a").await;
    queue_batch_jobs(&app, a, 3 * SLOTS).await;

    // The worker runs as many of A's jobs as it may: every slot but the one kept for the front.
    let deadline = Instant::now() + Duration::from_secs(LONG_CALL_MS / 1000 - 1);
    while count(&app, "tenant-a", "running").await < (SLOTS - 1) as i64 {
        assert!(
            Instant::now() < deadline,
            "A's jobs did not start in the free slots"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // B's job starts while all of A's are still in their provider calls.
    let b_job = send_turn(&app, &other, &b_conversation).await;
    loop {
        let running_a = count(&app, "tenant-a", "running").await;
        let finished_a = count(&app, "tenant-a", "succeeded").await;
        assert_eq!(
            finished_a, 0,
            "B's job did not start before one of A's provider calls ended"
        );
        assert!(
            running_a < SLOTS as i64,
            "A's jobs took every slot, the one kept for the front too: {running_a} running"
        );
        if count(&app, "tenant-b", "running").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.wait_for_job_as(&other, &b_job).await["status"],
        "succeeded"
    );
    app.stop().await;
}
