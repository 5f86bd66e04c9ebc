//! Every way a job or a response ends calls back with its own event type: a job that fails or is
//! cancelled, a response that fails, is cut short at `max_output_tokens` or is cancelled.

use std::collections::BTreeSet;
use std::time::Duration;

use chatq_mock_llm::{Fault, MockConfig};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestOptions, id_of, spawn_app_with};
use crate::responses::wait_for_response;
use crate::webhooks::webhook_receiver::{Answer, Received, WebhookReceiver};
use crate::webhooks::{create_webhook, local_receivers};

/// A response in the background, as the `openai` SDK creates one.
async fn create_response(app: &TestApp, body: Value) -> String {
    let response: Value = app
        .post_json("/v1/responses", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(response["status"], "queued", "{response}");
    id_of(&response)
}

/// (event type, id of the object it is about) of each event delivered.
fn delivered(received: &[Received]) -> BTreeSet<(String, String)> {
    received
        .iter()
        .filter(|r| r.status == Some(200))
        .map(|r| {
            let event = r.json();
            (
                event["type"].as_str().unwrap_or_default().to_owned(),
                event["data"]["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_ending_of_a_job_or_response_is_called_back_with_its_own_event() {
    let receiver = WebhookReceiver::start(Answer::FailFirst(0)).await;
    let app = spawn_app_with(TestOptions {
        settings: Box::new(local_receivers),
        ..TestOptions::default()
    })
    .await;
    create_webhook(
        &app,
        json!({"url": receiver.url(), "events": ["job.*", "response.*"]}),
    )
    .await;
    let conversation = id_of(&app.create_conversation(json!({})).await);
    let mut expected = BTreeSet::new();

    // A provider that refuses every request (a 400 is not retried): both fail.
    app.mock.set_config(MockConfig {
        fault: Some(Fault::Status { status: 400 }),
        ..MockConfig::default()
    });
    let failed_job = app.turn(&conversation, "refused").await;
    assert_eq!(failed_job["status"], "failed", "{failed_job}");
    expected.insert(("job.failed".to_owned(), id_of(&failed_job)));
    let failed_response = create_response(
        &app,
        json!({"model": "mock-model", "input": "refused", "background": true}),
    )
    .await;
    assert_eq!(
        wait_for_response(&app, &failed_response).await["status"],
        "failed"
    );
    expected.insert(("response.failed".to_owned(), failed_response));

    // A reply longer than the response may be: incomplete.
    app.mock.set_config(MockConfig::default());
    let cut_short = create_response(
        &app,
        json!({"model": "mock-model", "input": "go on", "background": true, "max_output_tokens": 2}),
    )
    .await;
    let response = wait_for_response(&app, &cut_short).await;
    assert_eq!(response["status"], "incomplete", "{response}");
    expected.insert(("response.incomplete".to_owned(), cut_short));

    // A provider that takes its time: both are cancelled while they run.
    app.mock.set_config(MockConfig {
        ttft_ms: 60_000,
        ..MockConfig::default()
    });
    let accepted = app.send(&conversation, "never mind").await;
    let cancelled_job = accepted["job"]["id"].as_str().unwrap().to_owned();
    let cancelled_response = create_response(
        &app,
        json!({"model": "mock-model", "input": "never mind", "background": true}),
    )
    .await;
    let cancel = app
        .post_json(&format!("/v1/jobs/{cancelled_job}/cancel"), &json!({}))
        .await;
    assert!(
        cancel.status().is_success(),
        "{}",
        cancel.text().await.unwrap()
    );
    let cancel = app
        .post_json(
            &format!("/v1/responses/{cancelled_response}/cancel"),
            &json!({}),
        )
        .await;
    assert!(
        cancel.status().is_success(),
        "{}",
        cancel.text().await.unwrap()
    );
    assert_eq!(
        app.wait_for_job(&cancelled_job).await["status"],
        "cancelled"
    );
    assert_eq!(
        wait_for_response(&app, &cancelled_response).await["status"],
        "cancelled"
    );
    expected.insert(("job.cancelled".to_owned(), cancelled_job));
    expected.insert(("response.cancelled".to_owned(), cancelled_response));

    let received = receiver
        .wait_until(
            "an event for each ending",
            Duration::from_secs(30),
            |received| delivered(received).len() >= expected.len(),
        )
        .await;
    assert_eq!(delivered(&received), expected);
    // One delivery each: nothing else ended, nothing was called back twice.
    assert_eq!(received.len(), expected.len(), "{received:#?}");
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_is_given_up_after_the_retry_period() {
    let receiver = WebhookReceiver::start(Answer::FailFirst(usize::MAX)).await;
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|settings| {
            local_receivers(settings);
            settings.webhooks.retry_for_secs = 1;
        }),
        ..TestOptions::default()
    })
    .await;
    create_webhook(&app, json!({"url": receiver.url(), "events": ["job.*"]})).await;
    let conversation = id_of(&app.create_conversation(json!({})).await);
    app.turn(&conversation, "hello").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (status, attempts, error) = loop {
        let row: (String, i32, Option<String>) =
            sqlx::query_as("SELECT status, attempts, last_error FROM webhook_outbox")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if row.0 != "pending" || tokio::time::Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, "failed");
    assert_eq!(error.as_deref(), Some("the receiver answered HTTP 500"));
    // Retried within the period, and not once more after it was given up.
    let sent = receiver.received();
    assert!(attempts >= 2, "{attempts} attempts");
    assert_eq!(sent.len(), attempts as usize);
    assert!(sent.iter().all(|r| r.status == Some(500)), "{sent:#?}");
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_asks_for_a_wait_is_not_tried_again_before_it() {
    const WAIT: Duration = Duration::from_secs(2);
    let receiver = WebhookReceiver::start(Answer::ThrottleFirst {
        retry_after_secs: WAIT.as_secs(),
    })
    .await;
    // Retries 50 ms apart otherwise.
    let app = spawn_app_with(TestOptions {
        settings: Box::new(local_receivers),
        ..TestOptions::default()
    })
    .await;
    create_webhook(&app, json!({"url": receiver.url(), "events": ["job.*"]})).await;
    let conversation = id_of(&app.create_conversation(json!({})).await);
    app.turn(&conversation, "hello").await;

    let received = receiver
        .wait_until("the event delivered", Duration::from_secs(30), |received| {
            received.iter().any(|r| r.status == Some(200))
        })
        .await;
    let statuses: Vec<_> = received.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(429), Some(200)]);
    let waited = received[1].at - received[0].at;
    assert!(waited >= WAIT, "tried again after {waited:?}");
    app.stop().await;
}
