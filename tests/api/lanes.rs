//! Lanes: interactive jobs go first; batch jobs use what is left. And the fleet as operators see it.

use std::time::Duration;

use chatq_common::chat::{ChatMessage, GenerationParams, Role};
use chatq_common::db::jobs::{self, NewJob};
use chatq_common::ids::{JobId, TenantId};
use chatq_common::job::{JobRequest, Lane};
use chatq_common::queue::publish_job;
use chatq_mock_llm::MockConfig;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestOptions, spawn_app_with};

/// Queues `n` batch jobs the way a batch submission does: recorded, then published on the batch
/// lane.
pub(crate) async fn queue_batch_jobs(app: &crate::helpers::TestApp, tenant: TenantId, n: usize) {
    let jetstream = async_nats::jetstream::new(app.nats.clone());
    futures::stream::iter(0..n)
        .map(|i| {
            let jetstream = jetstream.clone();
            async move {
                let job_id = JobId::new();
                let request = JobRequest::ChatCompletion {
                    params: GenerationParams {
                        model: "mock-model".into(),
                        ..GenerationParams::default()
                    },
                    body: None,
                    messages: vec![ChatMessage::new(Role::User, format!("batch item {i}"))],
                };
                let new = NewJob {
                    id: job_id,
                    tenant,
                    lane: Lane::Batch,
                    request,
                    model: Some("mock-model".into()),
                    default_model: None,
                    idempotency: None,
                    deadline_secs: 3600.0,
                    max_queued: None,
                    turn: None,
                    trace: None,
                };
                jobs::record(&app.pool, &[new]).await.unwrap();
                publish_job(&jetstream, &app.topology, job_id, Lane::Batch, None)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<()>()
        .await;
}

#[tokio::test]
async fn interactive_jobs_start_before_queued_batch_jobs() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 150,
            tokens: 1,
            ..MockConfig::default()
        },
        settings: Box::new(|s| s.worker.concurrency = 2),
        ..TestOptions::default()
    })
    .await;
    let tenant: TenantId = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'tenant-a'")
        .fetch_one(&app.pool)
        .await
        .map(TenantId::from_uuid)
        .unwrap();
    queue_batch_jobs(&app, tenant, 10_000).await;
    // The worker is busy with batch jobs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM jobs WHERE lane = 'batch' AND status = 'succeeded'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch jobs never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut interactive = Vec::new();
    for i in 0..10 {
        let conversation = app.create_conversation(json!({})).await;
        let accepted = app
            .send(conversation["id"].as_str().unwrap(), &format!("urgent {i}"))
            .await;
        interactive.push(accepted["job"]["id"].as_str().unwrap().to_owned());
    }
    let submitted: time::OffsetDateTime = sqlx::query_scalar("SELECT now()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    for job in &interactive {
        assert_eq!(app.wait_for_job(job).await["status"], "succeeded");
    }

    // Every batch job that started after the interactive ones were queued (allowing a pull that
    // was already on its way) started after the last interactive job. `started_at` is when the
    // claim ran, so a batch job pulled before the interactive ones were queued may show a start
    // well after: once in a full parallel run, with every core busy, one did 250 ms after. Without
    // lanes, the interactive jobs would wait behind 10,000 batch jobs, far longer than a second.
    let last_interactive: time::OffsetDateTime =
        sqlx::query_scalar("SELECT max(started_at) FROM jobs WHERE lane = 'interactive'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let overtaking: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE lane = 'batch' AND started_at > $1 + interval '1 second' AND started_at < $2",
    )
    .bind(submitted)
    .bind(last_interactive)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        overtaking, 0,
        "batch jobs started while interactive ones waited"
    );
    let still_queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE lane = 'batch' AND status = 'queued'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        still_queued > 9000,
        "the batch backlog is still there: {still_queued}"
    );
    app.stop().await;
}

#[tokio::test]
async fn batch_jobs_run_when_the_interactive_lane_is_idle() {
    let app = spawn_app_with(TestOptions::default()).await;
    let tenant: TenantId = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'tenant-a'")
        .fetch_one(&app.pool)
        .await
        .map(TenantId::from_uuid)
        .unwrap();
    queue_batch_jobs(&app, tenant, 50).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE lane = 'batch' AND status = 'succeeded'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if done == 50 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} of 50 batch jobs ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn operators_see_every_live_worker() {
    let app = spawn_app_with(TestOptions {
        workers: 2,
        ..TestOptions::default()
    })
    .await;
    let admin = app.admin_key().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let workers = loop {
        let body: Value = app
            .request_as(&admin, Method::GET, "/v1/admin/workers")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let workers = body["data"].as_array().cloned().unwrap_or_default();
        if workers.len() == 2 && workers.iter().all(|w| w["fleet_size"] == 2) {
            break workers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers never all showed up: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for worker in &workers {
        assert_eq!(worker["object"], "worker");
        assert_eq!(worker["configured_concurrency"], 16);
        assert_eq!(worker["concurrency"], 16);
        // Idle: waiting on a pull with every slot free is not having jobs in flight.
        assert_eq!(worker["in_flight"], 0, "{worker}");
        assert_eq!(worker["processed"], 0, "{worker}");
        assert!(worker["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(
            worker["last_heartbeat_age_secs"]
                .as_f64()
                .is_some_and(|age| age < 10.0)
        );
    }
    let response = app
        .request(Method::GET, "/v1/admin/workers")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
    app.stop().await;
}
