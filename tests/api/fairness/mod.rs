//! Fair sharing between tenants: a tenant that floods the queue delays its own jobs, not
//! another's ([`front_slots`]: a job at the front finds a slot kept for it; [`in_flight`]: a
//! tenant at its in-flight quota waits without spending attempts;
//! [`usage_rows`]: the writes of one tenant's jobs do not wait for each other; [`shared_slots`]:
//! nor do its recordings far below its quota); the queued quota holds across ingress processes.

mod front_slots;
mod in_flight;
mod shared_slots;
mod usage_rows;

use chatq_common::db::conversations;
use chatq_common::ids::TenantId;
use chatq_mock_llm::MockConfig;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use time::OffsetDateTime;

use crate::helpers::{TestApp, TestOptions, completion_job, spawn_app_with};

/// A provider call takes this long (time to its only token).
const PROVIDER_MS: u64 = 200;

pub(super) async fn tenant_id(app: &TestApp, name: &str) -> TenantId {
    sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(name)
        .fetch_one(&app.pool)
        .await
        .map(TenantId::from_uuid)
        .unwrap()
}

/// Sends one turn on each conversation, `parallel` at a time, with `key`, through the ingress at
/// `base`; returns the statuses.
async fn send_all(
    app: &TestApp,
    base: &str,
    key: &str,
    conversations: &[String],
    parallel: usize,
) -> Vec<StatusCode> {
    futures::stream::iter(conversations)
        .map(|conversation| {
            let request = app
                .http
                .post(format!("{base}/v1/conversations/{conversation}/messages"))
                .bearer_auth(key)
                .json(&json!({ "content": "hello" }));
            async move { request.send().await.unwrap().status() }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// `count` conversations of `tenant`, made straight in the database.
pub(super) async fn conversations_of(app: &TestApp, tenant: &str, count: usize) -> Vec<String> {
    let tenant = tenant_id(app, tenant).await;
    conversations::create_many(&app.pool, tenant, Some("fairness"), count)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Time from creation to start of the tenant's jobs that started, in milliseconds.
async fn queue_waits(app: &TestApp, tenant: TenantId, since: OffsetDateTime) -> Vec<f64> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM started_at - created_at) * 1000)::float8 FROM jobs
          WHERE tenant_id = $1 AND created_at >= $2 AND started_at IS NOT NULL",
    )
    .bind(tenant.as_uuid())
    .bind(since)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

pub(super) async fn now(app: &TestApp) -> OffsetDateTime {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Sends one turn on `conversation` with `key`; returns its job's id.
pub(super) async fn send_turn(app: &TestApp, key: &str, conversation: &str) -> String {
    let accepted: serde_json::Value = app
        .request_as(
            key,
            Method::POST,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .json(&json!({ "content": "quick question" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    accepted["job"]["id"].as_str().unwrap().to_owned()
}

/// Sends one turn on each conversation with `key` at once and waits for all of them.
pub(super) async fn run_turns(app: &TestApp, key: &str, conversations: &[String]) {
    let mut jobs = Vec::new();
    for conversation in conversations {
        jobs.push(send_turn(app, key, conversation).await);
    }
    for job in jobs {
        assert_eq!(app.wait_for_job_as(key, &job).await["status"], "succeeded");
    }
}

#[tokio::test]
async fn a_tenant_flooding_the_queue_does_not_delay_another_tenants_jobs() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: PROVIDER_MS,
            tokens: 1,
            ..MockConfig::default()
        },
        settings: Box::new(|s| s.worker.concurrency = 4),
        ..TestOptions::default()
    })
    .await;
    let other = app.other_tenant_key("tenant-b").await;
    let b = tenant_id(&app, "tenant-b").await;
    let b_conversations = conversations_of(&app, "tenant-b", 8).await;

    // B's jobs on an idle queue.
    let idle_since = now(&app).await;
    run_turns(&app, &other, &b_conversations[..4]).await;
    let idle = queue_waits(&app, b, idle_since).await;
    let idle_max = idle.iter().copied().fold(0.0, f64::max);

    // A floods: 2,000 jobs, a hundred seconds of work for this fleet.
    let flood = conversations_of(&app, "tenant-a", 2000).await;
    let url = app.url("");
    let statuses = send_all(&app, &url, &app.key, &flood, 64).await;
    assert!(
        statuses
            .iter()
            .all(|status| *status == StatusCode::ACCEPTED)
    );

    let busy_since = now(&app).await;
    run_turns(&app, &other, &b_conversations[4..]).await;
    let busy = queue_waits(&app, b, busy_since).await;
    let busy_max = busy.iter().copied().fold(0.0, f64::max);
    let a_waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j JOIN tenants t ON t.id = j.tenant_id
          WHERE t.name = 'tenant-a' AND j.status = 'queued'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        a_waiting > 1000,
        "A's backlog was still there when B's jobs finished: {a_waiting}"
    );
    // With every slot busy, B's jobs wait for slots to free (each call takes PROVIDER_MS, four
    // run at once), not for A's backlog: behind it, they would wait about a hundred seconds.
    assert_eq!(busy.len(), 4);
    let bound = idle_max + 2.0 * PROVIDER_MS as f64 + 250.0;
    assert!(
        busy_max < bound,
        "B's jobs waited up to {busy_max:.0} ms behind A's flood (idle queue: {idle_max:.0} ms; bound {bound:.0} ms): {busy:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_queued_quota_holds_across_two_ingresses() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.limits.tenant_max_queued_jobs = Some(5)),
        ..TestOptions::default()
    })
    .await;
    // A second ingress process: its own pool and NATS connection, the same database and queue.
    let pool = chatq_common::db::connect(&app.settings.database)
        .await
        .unwrap();
    let nats = chatq_common::nats::connect(&app.settings.nats.url, "second-ingress")
        .await
        .unwrap();
    let second = chatq_ingress::Application::build(&app.settings, pool, nats)
        .await
        .unwrap();
    let second_url = format!("http://{}", second.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(second.run_until_stopped(stop.clone()));

    let conversations = conversations_of(&app, "tenant-a", 40).await;
    let (first_half, second_half) = conversations.split_at(20);
    let first_url = app.url("");
    let (one, two) = tokio::join!(
        send_all(&app, &first_url, &app.key, first_half, 20),
        send_all(&app, &second_url, &app.key, second_half, 20),
    );
    let statuses: Vec<StatusCode> = one.into_iter().chain(two).collect();
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((accepted, refused), (5, 35), "{statuses:?}");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 5);
    let counted: i32 =
        sqlx::query_scalar("SELECT sum(queued_jobs)::int4 FROM tenant_usage WHERE tenant_id = $1")
            .bind(tenant_id(&app, "tenant-a").await.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(counted, 5, "the usage row counts what was recorded");

    stop.cancel();
    running.await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn the_reconciler_queues_a_crowding_tenants_jobs_behind_others() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            s.limits.fair_share_queued_jobs = 2;
            s.worker.reconcile_interval_secs = 1;
            s.worker.reconcile_after_secs = 0;
        }),
        ..TestOptions::default()
    })
    .await;
    let a = tenant_id(&app, "tenant-a").await;
    // The tenant's jobs stay queued (its in-flight quota is 0), so their copies stay in the stream.
    let changes = chatq_common::db::quotas::QuotaChanges {
        jobs_in_flight: Some(chatq_common::db::quotas::QuotaChange::Limit(0)),
        ..Default::default()
    };
    chatq_common::db::quotas::set_overrides(&app.pool, "tenant-a", changes)
        .await
        .unwrap();
    // Recorded, never published (as by an ingress that stopped in between): the reconciler
    // publishes them.
    let jobs: Vec<chatq_common::db::jobs::NewJob> =
        (0..6).map(|_| completion_job(a, "hello")).collect();
    chatq_common::db::jobs::record(&app.pool, &jobs)
        .await
        .unwrap();

    let jetstream = async_nats::jetstream::new(app.nats.clone());
    let stream = jetstream
        .get_stream(app.topology.jobs_stream())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let subjects: std::collections::HashMap<String, usize> = stream
            .info_with_subjects(format!("{}.jobs.>", app.topology.namespace()))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let total: usize = subjects.values().sum();
        if total == 6 {
            assert_eq!(
                subjects.get(&app.topology.overflow_subject()),
                Some(&6),
                "a tenant with 6 queued (fair share 2) waits behind others: {subjects:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reconciler never published the jobs: {subjects:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop().await;
}
