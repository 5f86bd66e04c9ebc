//! What a tenant holds is counted in many rows, so that the writes of one busy tenant's jobs do
//! not wait for each other: a worker's claim goes on while another job of the same tenant is
//! being finished, or while an ingress records for that tenant. Recordings that hold the tenant's
//! quota lock exclusively still take turns ([`super::shared_slots`]: those far below the quota
//! share it), and so do claims, so the queued-jobs and in-flight quotas hold exactly.

use std::time::Duration;

use chatq_common::chat::GenerationParams;
use chatq_common::db::conversations::{self, NewConversation};
use chatq_common::db::jobs::{ClaimRequest, NotClaimed, claim};
use chatq_common::db::quotas::{Quota, lock_in_flight, lock_usage};
use chatq_common::ids::{JobId, TenantId};
use chatq_common::job::JobRequest;
use uuid::Uuid;

use super::tenant_id;
use crate::helpers::{TestApp, TestOptions, spawn_app_with};

/// A claim that waits longer than this waits for a lock: unlocked, it takes milliseconds.
pub(super) const NO_WAIT: Duration = Duration::from_secs(10);

/// Records queued interactive jobs of `tenant` with these ids, straight in the database.
async fn queue_jobs(app: &TestApp, tenant: TenantId, ids: &[Uuid]) {
    let request = serde_json::to_value(JobRequest::ConversationTurn {
        params: GenerationParams::default(),
    })
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, lane, status, request, model, deadline_at)
         SELECT id, $2, 'interactive', 'queued', $3, 'mock-model', now() + interval '1 hour'
           FROM unnest($1::uuid[]) AS id",
    )
    .bind(ids)
    .bind(tenant.as_uuid())
    .bind(request)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// A new job id that counts in usage row `row` of its tenant when a statement changes it alone
/// (`chatq_usage_shard`: the low 6 bits of the id's last byte).
fn id_in_row(row: u8) -> Uuid {
    let mut bytes = *Uuid::now_v7().as_bytes();
    bytes[15] = row;
    Uuid::from_bytes(bytes)
}

/// An app without workers, and its tenant.
pub(super) async fn app_without_workers() -> (TestApp, TenantId) {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    let tenant = tenant_id(&app, "tenant-a").await;
    (app, tenant)
}

/// An app without workers, and two queued jobs of its tenant that count in different usage rows.
async fn two_queued_jobs() -> (TestApp, TenantId, Uuid, Uuid) {
    let (app, tenant) = app_without_workers().await;
    let (first, second) = (id_in_row(1), id_in_row(2));
    queue_jobs(&app, tenant, &[first, second]).await;
    (app, tenant, first, second)
}

/// The tenant's queued and running interactive jobs, as its quotas count them.
async fn usage(app: &TestApp, tenant: TenantId) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(queued_jobs), 0)::int8, coalesce(sum(jobs_in_flight), 0)::int8
           FROM tenant_usage WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

fn claim_request(id: Uuid) -> [ClaimRequest; 1] {
    [ClaimRequest {
        id: JobId::from_uuid(id),
        token: Uuid::new_v4(),
        known_seq: 0,
    }]
}

/// Claims these jobs in one claim, which must not wait for a lock.
async fn claim_now(app: &TestApp, ids: &[Uuid]) {
    let asked: Vec<ClaimRequest> = ids.iter().flat_map(|id| claim_request(*id)).collect();
    let claimed = tokio::time::timeout(NO_WAIT, claim(&app.pool, &asked, "w1", 30.0, 10, None))
        .await
        .expect("the claim waited for another write of the tenant's jobs")
        .unwrap();
    assert!(claimed.iter().all(Result::is_ok), "{claimed:?}");
}

async fn claim_one(app: &TestApp, id: Uuid) {
    claim_now(app, &[id]).await;
}

/// The finish of `job` under way: the job cancelled, nothing committed yet.
async fn finish_under_way(app: &TestApp, job: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut finish = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = $1")
        .bind(job)
        .execute(&mut *finish)
        .await
        .unwrap();
    finish
}

/// A claim of `job` under way, with an in-flight quota of `max_in_flight`: the tenant's in-flight
/// lock held, the job running, nothing committed yet.
async fn claim_under_way(
    app: &TestApp,
    job: Uuid,
    max_in_flight: Option<u32>,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut claiming = app.pool.begin().await.unwrap();
    lock_in_flight(&mut claiming, &[job], max_in_flight)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET status = 'running', attempts = 1 WHERE id = $1")
        .bind(job)
        .execute(&mut *claiming)
        .await
        .unwrap();
    claiming
}

/// Waits until a session of this test's database waits for an advisory lock; fails if `task`
/// ends first (it did not wait).
pub(super) async fn until_waiting_for_a_lock<T>(app: &TestApp, task: &tokio::task::JoinHandle<T>) {
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                             WHERE l.locktype = 'advisory' AND NOT l.granted
                               AND a.datname = current_database())",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if waiting {
            return;
        }
        assert!(!task.is_finished(), "it did not wait for the lock");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_claim_does_not_wait_for_the_finish_of_another_job_of_its_tenant() {
    let (app, tenant, finishing, claimed) = two_queued_jobs().await;

    // A job of the tenant ends in a transaction that has not committed yet.
    let finish = finish_under_way(&app, finishing).await;
    claim_one(&app, claimed).await;
    finish.commit().await.unwrap();

    assert_eq!(
        usage(&app, tenant).await,
        (0, 1),
        "none queued, one running"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_claim_of_several_jobs_does_not_wait_for_the_finish_of_a_job_counted_beside_one_of_them()
{
    let (app, tenant) = app_without_workers().await;
    // Alone, the finished job and the first claimed one count in the same row (5); the claim of
    // both counts in one row for the two (5 + 7).
    let finishing = id_in_row(5);
    let claimed = [id_in_row(5), id_in_row(7)];
    queue_jobs(&app, tenant, &[finishing, claimed[0], claimed[1]]).await;

    let finish = finish_under_way(&app, finishing).await;
    claim_now(&app, &claimed).await;
    finish.commit().await.unwrap();

    assert_eq!(
        usage(&app, tenant).await,
        (0, 2),
        "none queued, two running"
    );
    app.stop().await;
}

#[tokio::test]
async fn claims_and_other_quotas_do_not_wait_for_a_recording_but_recordings_take_turns() {
    let (app, tenant, first, _) = two_queued_jobs().await;

    // An ingress is recording for the tenant: it holds the tenant's quota lock.
    let mut recording = app.pool.begin().await.unwrap();
    let seen = lock_usage(&mut recording, &[tenant], Quota::QueuedJobs)
        .await
        .unwrap();
    assert_eq!(seen[&tenant].queued_jobs, 2);
    claim_one(&app, first).await;

    // A second recording for the tenant waits for the first to commit, then counts what is
    // queued then.
    let pool = app.pool.clone();
    let second_recording = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        let seen = lock_usage(&mut tx, &[tenant], Quota::QueuedJobs)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        seen[&tenant].queued_jobs
    });
    until_waiting_for_a_lock(&app, &second_recording).await;

    // Checking another quota of the tenant does not wait for the recording.
    let conversation = NewConversation {
        title: None,
        system_prompt: None,
        model: None,
        metadata: serde_json::json!({}),
    };
    let created = tokio::time::timeout(
        NO_WAIT,
        conversations::create(&app.pool, tenant, &conversation, Some(100)),
    )
    .await
    .expect("creating a conversation waited for a recording of its tenant")
    .unwrap();
    assert!(created.is_ok(), "{created:?}");

    recording.commit().await.unwrap();
    assert_eq!(
        second_recording.await.unwrap(),
        1,
        "one job is still queued"
    );
    app.stop().await;
}

#[tokio::test]
async fn claims_of_one_tenant_take_turns_so_the_in_flight_quota_holds() {
    let (app, tenant, first, second) = two_queued_jobs().await;

    // A claim of the tenant's first job is under way: the lock is held, the job is running, and
    // nothing is committed yet.
    let claiming = claim_under_way(&app, first, Some(1)).await;

    // Another worker claims the second with a quota of one job in flight: it waits for the first
    // claim, then counts its job.
    let pool = app.pool.clone();
    let second_claim = tokio::spawn(async move {
        claim(&pool, &claim_request(second), "w2", 30.0, 10, Some(1))
            .await
            .unwrap()
    });
    until_waiting_for_a_lock(&app, &second_claim).await;
    claiming.commit().await.unwrap();
    let outcome = second_claim.await.unwrap();
    assert!(
        matches!(outcome[0], Err(NotClaimed::TenantAtQuota)),
        "{outcome:?}"
    );
    assert_eq!(usage(&app, tenant).await, (1, 1), "one queued, one running");
    app.stop().await;
}

#[tokio::test]
async fn claims_of_a_tenant_without_an_in_flight_quota_go_on_side_by_side() {
    let (app, tenant, first, second) = two_queued_jobs().await;

    // A claim of the tenant's first job is under way, with no in-flight quota to count.
    let claiming = claim_under_way(&app, first, None).await;

    // Another worker's claim of the second does not wait for it.
    claim_one(&app, second).await;
    claiming.commit().await.unwrap();
    assert_eq!(usage(&app, tenant).await, (0, 2), "both running");
    app.stop().await;
}
