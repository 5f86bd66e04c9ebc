//! One trace per request: `traceparent` in and out of the ingress, recorded on the job, and sent
//! with every copy of the job published to JetStream. (That a worker's log lines carry the trace
//! is checked across processes, in the fault tests.)

use std::time::Duration;

use chatq_common::db::jobs::reconcile;
use chatq_common::job::Lane;
use chatq_common::trace::{TRACEPARENT, TraceContext};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, TestOptions, messages_path, spawn_app_with};

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Sends a message with `traceparent` (if any); returns the job id and the answer's
/// `traceparent`.
async fn send_traced(app: &TestApp, traceparent: Option<&str>) -> (String, TraceContext) {
    let conversation = app.create_conversation(json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut request = app
        .request(Method::POST, &messages_path(&conversation))
        .json(&json!({ "content": "hello" }));
    if let Some(traceparent) = traceparent {
        request = request.header(TRACEPARENT, traceparent);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answered = answered_trace(&response);
    let body: Value = response.json().await.unwrap();
    (body["job"]["id"].as_str().unwrap().to_owned(), answered)
}

fn answered_trace(response: &reqwest::Response) -> TraceContext {
    let header = response
        .headers()
        .get(TRACEPARENT)
        .expect("every answer has a traceparent")
        .to_str()
        .unwrap();
    TraceContext::parse(header).unwrap_or_else(|| panic!("not a valid traceparent: {header}"))
}

fn job_uuid(job_id: &str) -> Uuid {
    job_id.trim_start_matches("job_").parse().unwrap()
}

/// The `traceparent` headers of the next `n` job messages on the interactive lane.
async fn published_traceparents(app: &TestApp, n: usize) -> Vec<Option<String>> {
    let jetstream = async_nats::jetstream::new(app.nats.clone());
    let consumer = app
        .topology
        .lane_consumer(&jetstream, Lane::Interactive)
        .await
        .unwrap();
    let messages = consumer
        .fetch()
        .max_messages(n)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let messages: Vec<_> = messages.take(n).collect().await;
    assert_eq!(messages.len(), n, "fewer job messages than expected");
    messages
        .into_iter()
        .map(|message| {
            let message = message.unwrap();
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(TRACEPARENT))
                .map(|value| value.as_str().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_request_continues_the_clients_trace_or_starts_one() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    let client = TraceContext::parse(CLIENT).unwrap();

    let (_, continued) = send_traced(&app, Some(CLIENT)).await;
    assert_eq!(continued.trace_id(), client.trace_id());
    assert_ne!(
        continued, client,
        "the ingress names its own part of the trace"
    );

    let (_, started) = send_traced(&app, None).await;
    let (_, restarted) = send_traced(&app, Some("00-not-a-valid-traceparent-01")).await;
    assert_ne!(started.trace_id(), client.trace_id());
    assert_ne!(restarted.trace_id(), client.trace_id());
    assert_ne!(started.trace_id(), restarted.trace_id());

    // Any answer names its trace, errors and probes included.
    let probe = app.get("/healthz").await;
    assert_eq!(answered_trace(&probe).to_string().len(), 55);
    let unknown = app
        .request(Method::GET, "/v1/nothing-here")
        .header(TRACEPARENT, CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(answered_trace(&unknown).trace_id(), client.trace_id());
    app.stop().await;
}

#[tokio::test]
async fn every_copy_of_a_job_is_published_in_its_requests_trace() {
    // No workers: the test reads the job's messages itself.
    let app = spawn_app_with(TestOptions {
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    let (job_id, answered) = send_traced(&app, Some(CLIENT)).await;
    let id = job_uuid(&job_id);
    let recorded: Option<String> = sqlx::query_scalar("SELECT traceparent FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded, Some(answered.to_string()));

    // What the reconciler would publish again, had JetStream lost the job. The ingress marks the
    // job published in the background: wait for that mark, or it would land after ours.
    let marked = std::time::Instant::now();
    loop {
        let published: Option<time::OffsetDateTime> =
            sqlx::query_scalar("SELECT published_at FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if published.is_some() {
            break;
        }
        assert!(
            marked.elapsed() < std::time::Duration::from_secs(10),
            "the job is never marked published"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sqlx::query("UPDATE jobs SET published_at = NULL WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    let unpublished =
        reconcile::unpublished(&mut tx, chatq_common::job::Lane::Interactive, 0.0, 10)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(unpublished.len(), 1, "{unpublished:?}");
    assert_eq!(unpublished[0].traceparent, Some(answered.to_string()));

    // An operator retrying the job once it has failed publishes a new copy, in the same trace.
    sqlx::query("UPDATE jobs SET status = 'failed', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let admin = app.admin_key().await;
    let retried = app
        .request_as(
            &admin,
            Method::POST,
            &format!("/v1/admin/dead-letters/{job_id}/retry"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    assert_ne!(
        answered_trace(&retried).trace_id(),
        answered.trace_id(),
        "the operator's request has a trace of its own"
    );

    let published = published_traceparents(&app, 2).await;
    assert_eq!(
        published,
        vec![Some(answered.to_string()), Some(answered.to_string())]
    );
    app.stop().await;
}
