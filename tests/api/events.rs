//! `GET /v1/jobs/{id}/events`: live events, resume with Last-Event-ID, late subscribers, many
//! subscribers, disconnects, and providers that break mid-stream.

use std::time::Duration;

use chatq_mock_llm::{Fault, MockConfig};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, TestOptions, spawn_app_with};
use crate::sse::{SseEvent, SseReader};

/// A mock that streams slowly enough for a client to join, leave and come back mid-reply.
fn slow_stream() -> MockConfig {
    MockConfig {
        ttft_ms: 200,
        token_delay_ms: 40,
        tokens: 12,
        ..MockConfig::default()
    }
}

async fn start_job(app: &TestApp) -> String {
    let conversation = app.create_conversation(json!({})).await;
    let accepted = app
        .send(conversation["id"].as_str().unwrap(), "tell me about queues")
        .await;
    accepted["job"]["id"].as_str().unwrap().to_owned()
}

async fn subscribe(app: &TestApp, job: &str, last_event_id: Option<u64>) -> SseReader {
    let mut request = app.request(Method::GET, &format!("/v1/jobs/{job}/events"));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    SseReader::new(response)
}

/// The text of every delta, joined.
fn text_of(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.kind() == "message.delta")
        .map(|e| e.json()["delta"].as_str().unwrap().to_owned())
        .collect()
}

fn ids_of(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(SseEvent::id_number).collect()
}

#[tokio::test]
async fn a_subscriber_sees_the_whole_life_of_a_job_in_order() {
    let app = spawn_app_with(TestOptions {
        mock: slow_stream(),
        ..TestOptions::default()
    })
    .await;
    let job = start_job(&app).await;
    let response = app
        .request(Method::GET, &format!("/v1/jobs/{job}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let events = SseReader::new(response).collect().await;

    let kinds: Vec<&str> = events.iter().map(SseEvent::kind).collect();
    assert_eq!(kinds.first(), Some(&"job.queued"));
    assert_eq!(kinds.get(1), Some(&"job.started"));
    assert_eq!(kinds.last(), Some(&"job.succeeded"));
    assert!(
        kinds[2..kinds.len() - 1]
            .iter()
            .all(|k| *k == "message.delta"),
        "{kinds:?}"
    );
    assert!(
        kinds.len() > 4,
        "the reply should arrive in several deltas: {kinds:?}"
    );
    let ids = ids_of(&events);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids must increase: {ids:?}"
    );

    // What streamed is what was stored, and the terminal event carries the stored job.
    let stored = app.wait_for_job(&job).await;
    let content = stored["reply"]["content"].as_str().unwrap();
    assert_eq!(text_of(&events), content);
    let terminal = events.last().unwrap().json();
    assert_eq!(terminal["status"], "succeeded");
    assert_eq!(terminal["reply"]["content"], content);
    app.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_mid_reply_with_exactly_the_rest() {
    let app = spawn_app_with(TestOptions {
        mock: slow_stream(),
        ..TestOptions::default()
    })
    .await;
    let job = start_job(&app).await;

    // Read until a few deltas have arrived, then hang up.
    let mut first = subscribe(&app, &job, None).await;
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|e: &&SseEvent| e.kind() == "message.delta")
        .count()
        < 3
    {
        seen.push(
            first
                .next()
                .await
                .expect("the stream goes on while the reply streams"),
        );
    }
    drop(first);
    let last = seen.last().unwrap().id_number();

    let rest = subscribe(&app, &job, Some(last)).await.collect().await;
    let whole = subscribe(&app, &job, None).await.collect().await;
    let mut joined = seen.clone();
    joined.extend(rest.iter().cloned());
    assert_eq!(ids_of(&joined), ids_of(&whole), "no gap and no repeat");
    assert_eq!(joined, whole);
    assert!(rest.iter().all(|e| e.id_number() > last));
    assert_eq!(rest.last().unwrap().kind(), "job.succeeded");

    // The query parameter works like the header.
    let response = app
        .request(
            Method::GET,
            &format!("/v1/jobs/{job}/events?last_event_id={last}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(SseReader::new(response).collect().await, rest);
    app.stop().await;
}

#[tokio::test]
async fn a_late_subscriber_gets_the_finished_job_at_once() {
    let app = spawn_app_with(TestOptions {
        mock: slow_stream(),
        ..TestOptions::default()
    })
    .await;
    let job = start_job(&app).await;
    let stored = app.wait_for_job(&job).await;

    let started = tokio::time::Instant::now();
    let events = subscribe(&app, &job, None).await.collect().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a finished job's stream ends at once"
    );
    assert_eq!(events.first().unwrap().kind(), "job.queued");
    assert_eq!(events.last().unwrap().kind(), "job.succeeded");
    assert_eq!(
        text_of(&events),
        stored["reply"]["content"].as_str().unwrap()
    );

    // Resuming after the terminal event yields nothing more.
    let last = events.last().unwrap().id_number();
    assert!(
        subscribe(&app, &job, Some(last))
            .await
            .collect()
            .await
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_thousand_subscribers_to_one_job_receive_identical_streams() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 1500,
            token_delay_ms: 20,
            tokens: 20,
            ..MockConfig::default()
        },
        settings: Box::new(|s| s.limits.max_event_streams = 2000),
        ..TestOptions::default()
    })
    .await;
    let job = start_job(&app).await;
    let url = app.url(&format!("/v1/jobs/{job}/events"));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let request = app.http.get(&url).bearer_auth(&app.key);
        readers.spawn(async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            SseReader::new(response).collect().await
        });
    }
    let streams = readers.join_all().await;
    let reference = &streams[0];
    assert_eq!(reference.last().unwrap().kind(), "job.succeeded");
    for stream in &streams {
        assert_eq!(stream, reference);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_leaves_the_job_to_finish() {
    let app = spawn_app_with(TestOptions {
        mock: slow_stream(),
        ..TestOptions::default()
    })
    .await;
    let conversation = app.create_conversation(json!({})).await;
    let id = conversation["id"].as_str().unwrap();
    let job = app.send(id, "hello").await["job"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut reader = subscribe(&app, &job, None).await;
    while reader.next().await.unwrap().kind() != "message.delta" {}
    drop(reader);

    let finished = app.wait_for_job(&job).await;
    assert_eq!(finished["status"], "succeeded");
    let history = app.history(id).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["content"], finished["reply"]["content"]);
    app.stop().await;
}

#[tokio::test]
async fn idle_streams_get_keep_alive_comments() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 2500,
            ..MockConfig::default()
        },
        settings: Box::new(|s| s.ingress.sse_keepalive_secs = 1),
        ..TestOptions::default()
    })
    .await;
    let job = start_job(&app).await;
    let mut reader = subscribe(&app, &job, None).await;
    while reader.next().await.unwrap().kind() != "message.delta" {}
    assert!(
        reader.comments >= 1,
        "expected a keep-alive comment while the provider was silent"
    );
    drop(reader);
    app.stop().await;
}

/// A provider stream that breaks, garbles or stalls mid-reply: the job fails after its attempts
/// and every subscriber gets a terminal event instead of hanging.
async fn broken_stream_ends_with_a_terminal_event(fault: Fault, error_type: &str) {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            tokens: 10,
            token_delay_ms: 10,
            fault: Some(fault),
            ..MockConfig::default()
        },
        settings: Box::new(|s| {
            s.nats.job_max_attempts = 2;
            s.provider.idle_timeout_secs = 1;
        }),
        ..TestOptions::default()
    })
    .await;
    let job = start_job(&app).await;
    let events = tokio::time::timeout(
        Duration::from_secs(30),
        subscribe(&app, &job, None).await.collect(),
    )
    .await
    .expect("the stream ends with a terminal event, it does not hang");
    let terminal = events.last().unwrap();
    assert_eq!(terminal.kind(), "job.failed", "{events:?}");
    assert_eq!(terminal.json()["error"]["type"], error_type);
    let attempts: Vec<u64> = events
        .iter()
        .filter(|e| e.kind() == "job.started")
        .map(|e| e.json()["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2], "one job.started per attempt");
    let job = app.wait_for_job(&job).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 2);
    app.stop().await;
}

#[tokio::test]
async fn a_truncated_provider_stream_fails_the_job_cleanly() {
    broken_stream_ends_with_a_terminal_event(
        Fault::TruncateAfter { after_tokens: 3 },
        "provider_malformed_reply",
    )
    .await;
}

#[tokio::test]
async fn malformed_provider_chunks_fail_the_job_cleanly() {
    broken_stream_ends_with_a_terminal_event(
        Fault::MalformedAfter { after_tokens: 3 },
        "provider_malformed_reply",
    )
    .await;
}

#[tokio::test]
async fn a_stalled_provider_stream_times_out_and_fails_the_job() {
    broken_stream_ends_with_a_terminal_event(
        Fault::StallAfter { after_tokens: 3 },
        "provider_timeout",
    )
    .await;
}

#[tokio::test]
async fn bad_event_stream_requests_are_refused() {
    let app = spawn_app_with(TestOptions::default()).await;
    let job = start_job(&app).await;
    let response = app
        .request(Method::GET, &format!("/v1/jobs/{job}/events"))
        .header("Last-Event-ID", "not-a-number")
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;

    let other = app.other_tenant_key("tenant-b").await;
    let response = app
        .request_as(&other, Method::GET, &format!("/v1/jobs/{job}/events"))
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    app.stop().await;
}

#[tokio::test]
async fn a_stream_on_a_job_deleted_mid_reply_ends_with_a_terminal_event() {
    let app = spawn_app_with(TestOptions {
        // Long enough that the conversation is deleted while the provider still answers.
        mock: MockConfig {
            ttft_ms: 100,
            token_delay_ms: 200,
            tokens: 100,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let conversation = app.create_conversation(json!({})).await;
    let conversation = conversation["id"].as_str().unwrap();
    let job = app.send(conversation, "a long story, please").await["job"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut events = subscribe(&app, &job, None).await;
    // Wait for the reply to be under way.
    loop {
        let event = events.next().await.expect("events before the end");
        if event.kind() == "message.delta" {
            break;
        }
    }
    let deleted = app
        .request(Method::DELETE, &format!("/v1/conversations/{conversation}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let started = tokio::time::Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(15), events.collect())
        .await
        .expect("the stream ends within seconds of its job being deleted");
    let last = rest.last().expect("a terminal event");
    assert_eq!(last.kind(), "job.failed", "{rest:?}");
    assert_eq!(last.json()["error"]["type"], "not_found", "{rest:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    app.stop().await;
}

#[tokio::test]
async fn a_send_waiting_on_a_job_deleted_mid_reply_answers_with_the_job_as_sent() {
    let app = spawn_app_with(TestOptions {
        // Long enough that the conversation is deleted while the provider still answers.
        mock: MockConfig {
            ttft_ms: 100,
            token_delay_ms: 200,
            tokens: 100,
            ..MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let conversation = app.create_conversation(json!({})).await;
    let conversation = conversation["id"].as_str().unwrap().to_owned();
    // The waiting send follows its job from the moment it is recorded.
    let send = app
        .request(
            Method::POST,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .header("prefer", "wait=30")
        .json(&json!({ "content": "a long story, please" }))
        .send();
    let send = tokio::spawn(send);
    let running = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE status = 'running'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
            == 1
    };
    while !running().await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deleted = app
        .request(Method::DELETE, &format!("/v1/conversations/{conversation}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let answer = tokio::time::timeout(Duration::from_secs(15), send)
        .await
        .expect("the wait ends within seconds of its job being deleted")
        .unwrap()
        .unwrap();
    let body: serde_json::Value = answer.json().await.unwrap();
    let job = &body["job"];
    assert_eq!(job["status"], "failed", "{body}");
    assert_eq!(job["error"]["type"], "not_found", "{body}");
    // Described as it was sent, not as an unknown job.
    assert_eq!(job["conversation_id"], conversation.as_str(), "{body}");
    assert_eq!(job["model"], "mock-model", "{body}");
    assert_eq!(job["lane"], "interactive", "{body}");
    assert!(job["created_at"].as_i64().unwrap() > 0, "{body}");
    app.stop().await;
}
