//! Recordings of one busy tenant's jobs far below its queued-jobs quota go on side by side, each
//! holding one slot of the tenant's lock; a recording near the quota holds every slot and counts
//! exactly, so the quota still holds however many recordings run at once.

use chatq_common::db::jobs::{NewJob, Recorded, record};
use chatq_common::db::quotas::{Hold, Quota, lock_queued, lock_usage};
use futures::future::join_all;

use super::usage_rows::{NO_WAIT, app_without_workers, until_waiting_for_a_lock};
use crate::helpers::completion_job;

#[tokio::test]
async fn shared_holds_do_not_wait_for_each_other_and_an_exclusive_one_waits_for_all() {
    let (app, tenant) = app_without_workers().await;

    // Two recordings of the tenant hold a slot each, neither committed.
    let mut first = app.pool.begin().await.unwrap();
    lock_queued(&mut first, &[(tenant, Hold::Shared)])
        .await
        .unwrap();
    let mut second = app.pool.begin().await.unwrap();
    tokio::time::timeout(NO_WAIT, lock_queued(&mut second, &[(tenant, Hold::Shared)]))
        .await
        .expect("a shared hold waited for another")
        .unwrap();

    // A recording near the quota waits for both.
    let pool = app.pool.clone();
    let exclusive = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        lock_usage(&mut tx, &[tenant], Quota::QueuedJobs)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    });
    until_waiting_for_a_lock(&app, &exclusive).await;
    first.commit().await.unwrap();
    until_waiting_for_a_lock(&app, &exclusive).await;
    second.commit().await.unwrap();
    tokio::time::timeout(NO_WAIT, exclusive)
        .await
        .expect("the exclusive hold was not granted once both committed")
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn recordings_side_by_side_never_take_a_tenant_past_its_quota() {
    let (app, tenant) = app_without_workers().await;

    // Far enough below the quota to start shared (1,200 jobs leave room for 100 plus 7 slots of
    // 128), then near it: 16 recorders of 100 jobs each, twice, ask for 3,200.
    const QUOTA: u32 = 1_200;
    let batch = |_| -> Vec<NewJob> {
        (0..100)
            .map(|n| NewJob {
                max_queued: Some(QUOTA),
                ..completion_job(tenant, &format!("job {n}"))
            })
            .collect()
    };
    let pool = app.pool.clone();
    let recorders = (0..16).map(|_| {
        let pool = pool.clone();
        async move {
            let mut outcomes = Vec::new();
            for round in 0..2 {
                outcomes.extend(record(&pool, &batch(round)).await.unwrap());
            }
            outcomes
        }
    });
    let outcomes: Vec<Recorded> = join_all(recorders).await.into_iter().flatten().collect();

    let enqueued = outcomes
        .iter()
        .filter(|o| matches!(o, Recorded::Enqueued(_)))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Recorded::OverQuota(over) if over.quota == Quota::QueuedJobs))
        .count();
    assert_eq!(
        (enqueued, refused),
        (1_200, 2_000),
        "every job recorded up to the quota, and no more"
    );
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE tenant_id = $1 AND status = 'queued'")
            .bind(tenant.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(queued, 1_200);
    app.stop().await;
}
