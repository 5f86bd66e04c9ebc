//! Cancellation (of a queued job, a running one, one whose worker died) and deadlines.

use std::time::Duration;

use chatq_common::events::{EventIds, JobEvent};
use chatq_mock_llm::{Fault, MockConfig};
use futures::StreamExt;
use reqwest::{Method, StatusCode};

use crate::harness::{Stack, StackOptions};

/// A subscription to one job's events, opened before the action that emits them.
async fn job_events(stack: &Stack, job_id: &str) -> async_nats::Subscriber {
    stack
        .jetstream
        .client()
        .subscribe(format!("{}.events.{job_id}", stack.namespace))
        .await
        .unwrap()
}

/// The next event, or a failure after a few seconds.
async fn next_event(events: &mut async_nats::Subscriber) -> JobEvent {
    let message = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event arrives")
        .expect("the subscription is open");
    serde_json::from_slice(&message.payload).unwrap()
}

/// A mock that accepts calls and never answers.
fn hanging() -> MockConfig {
    MockConfig {
        fault: Some(Fault::Hang),
        ..MockConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_job_ends_it_at_once() {
    let mut stack = Stack::start(
        "cancel_queued",
        StackOptions {
            workers: 0,
            ..StackOptions::default()
        },
    )
    .await;
    let conversation = stack.client.create_conversations(1).await.remove(0);
    let accepted = stack.client.send(&conversation, "never mind").await;
    let mut events = job_events(&stack, &accepted.job_id).await;

    let cancel = format!("/v1/jobs/{}/cancel", accepted.job_id);
    let (status, job) = stack.client.once(Method::POST, &cancel).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["error"]["type"], "cancelled", "{job}");
    let event = next_event(&mut events).await;
    assert_eq!(event.body.name(), "job.cancelled");
    assert_eq!(event.id, EventIds::after_attempts(0));

    // Its message is still queued; a worker takes it out without calling the provider.
    stack.start_worker("worker-0", &[]).await;
    stack
        .wait_until("the queue is empty", Duration::from_secs(30), || async {
            stack.stream_messages(&stack.jobs_stream()).await == Some(0)
        })
        .await;
    assert_eq!(stack.mock.stats().requests, 0);
    let job = stack.client.job(&accepted.job_id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    // The conversation is free for the next message; a finished job cannot be cancelled.
    stack.client.send(&conversation, "actually, hello").await;
    let (status, body) = stack.client.once(Method::POST, &cancel).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = stack
        .client
        .once(
            Method::POST,
            "/v1/jobs/job_0190f2b5c1a87b6e9d2f3a4b5c6d7e8f/cancel",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_drops_the_provider_call() {
    let stack = Stack::start(
        "cancel_running",
        StackOptions {
            mock: hanging(),
            ..StackOptions::default()
        },
    )
    .await;
    let conversation = stack.client.create_conversations(1).await.remove(0);
    let accepted = stack.client.send(&conversation, "think hard").await;
    stack
        .wait_until(
            "the provider is called",
            Duration::from_secs(30),
            || async { stack.mock.stats().in_flight == 1 },
        )
        .await;
    let mut events = job_events(&stack, &accepted.job_id).await;

    let (status, job) = stack
        .client
        .once(
            Method::POST,
            &format!("/v1/jobs/{}/cancel", accepted.job_id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    let event = next_event(&mut events).await;
    assert_eq!(event.body.name(), "job.cancelled", "{event:?}");
    // The worker hung up on the provider.
    stack
        .wait_until("the call is dropped", Duration::from_secs(10), || async {
            stack.mock.stats().in_flight == 0
        })
        .await;
    assert_eq!(stack.mock.stats().requests, 1);
    stack
        .wait_until("the queue is empty", Duration::from_secs(10), || async {
            stack.stream_messages(&stack.jobs_stream()).await == Some(0)
        })
        .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_after_its_worker_died_never_calls_the_provider_again() {
    let mut stack = Stack::start(
        "cancel_dead_worker",
        StackOptions {
            mock: hanging(),
            ..StackOptions::default()
        },
    )
    .await;
    let conversation = stack.client.create_conversations(1).await.remove(0);
    let accepted = stack.client.send(&conversation, "think hard").await;
    stack
        .wait_until(
            "the provider is called",
            Duration::from_secs(30),
            || async { stack.mock.stats().requests == 1 },
        )
        .await;
    stack.workers[0].sigkill().await;

    // Nobody can stop it now: the cancel is recorded for later.
    let (status, job) = stack
        .client
        .once(
            Method::POST,
            &format!("/v1/jobs/{}/cancel", accepted.job_id),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "running", "{job}");
    let mut events = job_events(&stack, &accepted.job_id).await;

    stack.mock.set_config(MockConfig::default());
    stack.start_worker("worker-1", &[]).await;
    let job = stack
        .client
        .wait_for_job(&accepted.job_id, Duration::from_secs(30))
        .await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let event = next_event(&mut events).await;
    assert_eq!(event.body.name(), "job.cancelled", "{event:?}");
    assert_eq!(event.id, EventIds::after_attempts(1));
    assert_eq!(
        stack.mock.stats().requests,
        1,
        "the provider was called again"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_is_never_sent_to_the_provider() {
    let mut stack = Stack::start(
        "deadline",
        StackOptions {
            workers: 0,
            settings: vec![("CHATQ_JOB_DEADLINE_SECS", "2".into())],
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(2).await;
    let late = stack.client.send(&conversations[0], "too late").await;
    // No worker until its deadline has passed.
    stack
        .wait_until("the deadline passes", Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, bool>("SELECT bool_and(deadline_at < now()) FROM jobs")
                .fetch_one(&stack.pool)
                .await
                .unwrap_or(false)
        })
        .await;
    stack.start_worker("worker-0", &[]).await;
    let job = stack
        .client
        .wait_for_job(&late.job_id, Duration::from_secs(30))
        .await;
    assert_eq!(job["status"], "expired", "{job}");
    assert_eq!(job["error"]["type"], "expired", "{job}");
    assert_eq!(
        stack.mock.stats().requests,
        0,
        "an expired job reached the provider"
    );

    // A call still running at the deadline is dropped, and the job expires too.
    stack.mock.set_config(hanging());
    let slow = stack.client.send(&conversations[1], "slow").await;
    let job = stack
        .client
        .wait_for_job(&slow.job_id, Duration::from_secs(30))
        .await;
    assert_eq!(job["status"], "expired", "{job}");
    assert_eq!(stack.mock.stats().requests, 1);
    stack
        .wait_until("the call is dropped", Duration::from_secs(10), || async {
            stack.mock.stats().in_flight == 0
        })
        .await;
    stack.stop().await;
}
