//! The in-flight quota: a tenant at it waits in the queue, and waiting is neither an attempt
//! nor, however long it lasts, a failure.

use chatq_common::db::quotas::{QuotaChange, QuotaChanges, set_overrides};
use chatq_mock_llm::MockConfig;
use time::OffsetDateTime;

use super::{conversations_of, now, run_turns, tenant_id};
use crate::helpers::{TestOptions, spawn_app_with};

#[tokio::test]
async fn a_tenant_at_its_in_flight_quota_waits_without_spending_attempts() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 300,
            tokens: 1,
            ..MockConfig::default()
        },
        settings: Box::new(|s| {
            s.worker.concurrency = 8;
            s.limits.tenant_max_jobs_in_flight = Some(2);
        }),
        ..TestOptions::default()
    })
    .await;
    let a = tenant_id(&app, "tenant-a").await;
    let conversations = conversations_of(&app, "tenant-a", 6).await;
    let since = now(&app).await;
    run_turns(&app, &app.key.clone(), &conversations).await;

    let rows: Vec<(OffsetDateTime, OffsetDateTime, i32)> = sqlx::query_as(
        "SELECT started_at, finished_at, attempts FROM jobs WHERE tenant_id = $1 AND created_at >= $2",
    )
    .bind(a.as_uuid())
    .bind(since)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter().all(|(_, _, attempts)| *attempts == 1),
        "waiting for a place is not an attempt: {rows:?}"
    );
    // Most jobs running at any moment. A claim's timestamp is its statement's start, which may
    // come a little before the commit that freed its place; 50 ms is far below a call's 300.
    let mut edges: Vec<(OffsetDateTime, i32)> = rows
        .iter()
        .flat_map(|(started, finished, _)| {
            [
                (*started + time::Duration::milliseconds(50), 1),
                (*finished, -1),
            ]
        })
        .collect();
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, change) in edges {
        running += change;
        most = most.max(running);
    }
    assert!(
        most <= 2,
        "{most} of the tenant's jobs ran at once; its quota is 2"
    );
    app.stop().await;
}

#[tokio::test]
async fn waiting_at_the_in_flight_quota_never_dead_letters_a_job() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            // One attempt: JetStream gives up on a copy after 2 × 1 + 3 = 5 deliveries.
            s.nats.job_max_attempts = 1;
            s.worker.reconcile_interval_secs = 1;
            s.worker.reconcile_after_secs = 0;
        }),
        ..TestOptions::default()
    })
    .await;
    let quota = |change| QuotaChanges {
        jobs_in_flight: Some(change),
        ..Default::default()
    };
    set_overrides(&app.pool, "tenant-a", quota(QuotaChange::Limit(0)))
        .await
        .unwrap();
    let conversation = conversations_of(&app, "tenant-a", 1).await;
    let accepted = app.send(&conversation[0], "hello").await;
    let job = accepted["job"]["id"].as_str().unwrap().to_owned();
    let id: uuid::Uuid = job.trim_start_matches("job_").parse().unwrap();

    // Handed back at every delivery until JetStream gives the copy up; then a new copy.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, attempts, publication): (String, i32, i32) =
            sqlx::query_as("SELECT status, attempts, publication FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(
            (status.as_str(), attempts),
            ("queued", 0),
            "waiting for a place is neither an attempt nor a failure"
        );
        if publication >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy was never used up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        app.mock.requests().is_empty(),
        "the provider was never called"
    );

    // With a place again, the job runs, once.
    set_overrides(&app.pool, "tenant-a", quota(QuotaChange::Default))
        .await
        .unwrap();
    let finished = app.wait_for_job(&job).await;
    assert_eq!(finished["status"], "succeeded");
    assert_eq!(finished["attempts"], 1);
    app.stop().await;
}
