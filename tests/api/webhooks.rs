//! Completion webhooks: registering endpoints (bad input, private targets, tenancy), and
//! deliveries from the outbox: retried after failures until delivered exactly once, verified by
//! the official `openai` SDK, and never in the way of jobs when a receiver hangs; a batch
//! reported once, not line by line.

#[path = "../support/webhook_receiver.rs"]
pub(crate) mod webhook_receiver;

use std::time::{Duration, Instant};

use chatq_common::settings::Settings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use self::webhook_receiver::{Answer, Received, WebhookReceiver};
use crate::helpers::{TestApp, TestOptions, assert_error, id_of, run_sdk_script, spawn_app_with};

/// Settings for tests whose receiver is on 127.0.0.1: private targets allowed, quick retries.
pub(crate) fn local_receivers(settings: &mut Settings) {
    settings.webhooks.allow_private_targets = true;
    settings.webhooks.retry_base_ms = 50;
    settings.webhooks.poll_interval_ms = 20;
}

pub(crate) async fn create_webhook(app: &TestApp, body: Value) -> Value {
    let response = app.post_json("/v1/webhooks", &body).await;
    let status = response.status();
    let created: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

async fn endpoint_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn bad_endpoints_and_private_targets_are_refused_and_record_nothing() {
    let app = spawn_app_with(TestOptions::default()).await;
    // (url, events, the error code)
    let refused = [
        ("http://127.0.0.1:9/hook", &["job.*"][..], "url_not_allowed"),
        ("http://localhost:9/hook", &["job.*"][..], "url_not_allowed"),
        ("http://[::1]/hook", &["job.*"][..], "url_not_allowed"),
        (
            "http://169.254.169.254/latest/meta-data",
            &["job.*"][..],
            "url_not_allowed",
        ),
        ("http://10.0.0.1/hook", &["job.*"][..], "url_not_allowed"),
        (
            "http://[::ffff:192.168.0.1]/hook",
            &["job.*"][..],
            "url_not_allowed",
        ),
        ("ftp://example.com/hook", &["job.*"][..], "invalid_url"),
        (
            "https://user:pw@example.com/hook",
            &["job.*"][..],
            "invalid_url",
        ),
        ("not a url", &["job.*"][..], "invalid_url"),
        (
            "https://example.com/hook",
            &["job.started"][..],
            "invalid_value",
        ),
        ("https://example.com/hook", &[][..], "invalid_value"),
        ("https://example.com/hook", &["*"][..], "invalid_value"),
    ];
    for (url, events, code) in refused {
        let body = json!({ "url": url, "events": events });
        let response = app.post_json("/v1/webhooks", &body).await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
        assert_eq!(error["code"], code, "{body}: {error}");
    }
    let nul = app
        .request(Method::POST, "/v1/webhooks")
        .header("content-type", "application/json")
        .body(r#"{"url": "https://example.com/ho\u0000ok", "events": ["job.*"]}"#)
        .send()
        .await
        .unwrap();
    assert_error(nul, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    let unknown_field = app
        .post_json(
            "/v1/webhooks",
            &json!({"url": "https://example.com/hook", "events": ["job.*"], "secret": "mine"}),
        )
        .await;
    assert_error(
        unknown_field,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    )
    .await;
    assert_eq!(endpoint_count(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn another_tenants_webhook_is_not_found_and_gets_nothing() {
    let receiver = WebhookReceiver::start(Answer::FailFirst(0)).await;
    let app = spawn_app_with(TestOptions {
        settings: Box::new(local_receivers),
        ..TestOptions::default()
    })
    .await;
    let created = create_webhook(
        &app,
        json!({"url": receiver.url(), "events": ["job.*"], "description": "tenant a"}),
    )
    .await;
    let id = id_of(&created);
    assert!(id.starts_with("wh_"), "{created}");
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["events"], json!(["job.*"]));

    let other = app.other_tenant_key("tenant-b").await;
    for method in [Method::GET, Method::DELETE] {
        let response = app
            .request_as(&other, method, &format!("/v1/webhooks/{id}"))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    }
    let theirs: Value = app
        .request_as(&other, Method::GET, "/v1/webhooks")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["data"], json!([]), "{theirs}");

    // Another tenant's job ends: nothing is owed to this tenant's endpoint.
    let conversation: Value = app
        .request_as(&other, Method::POST, "/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let accepted: Value = app
        .request_as(
            &other,
            Method::POST,
            &format!("/v1/conversations/{}/messages", id_of(&conversation)),
        )
        .json(&json!({"content": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = app
        .wait_for_job_as(&other, accepted["job"]["id"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "succeeded");
    let owed: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(owed, 0);

    // The owner sees it, never with its secret, and deletes it.
    let shown = app.get_ok(&format!("/v1/webhooks/{id}")).await;
    assert!(shown.get("secret").is_none(), "{shown}");
    assert_eq!(shown["description"], "tenant a");
    let listed = app.get_ok("/v1/webhooks").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(listed["data"][0].get("secret").is_none(), "{listed}");
    let deleted = app
        .request(Method::DELETE, &format!("/v1/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let gone = app.get(&format!("/v1/webhooks/{id}")).await;
    assert_error(gone, StatusCode::NOT_FOUND, "not_found_error").await;
    assert!(receiver.received().is_empty());
    app.stop().await;
}

/// Successful deliveries, one per event, once every event has had one.
fn delivered_once_each(received: &[Received], events: usize) -> bool {
    received.iter().filter(|r| r.status == Some(200)).count() >= events
}

/// The outbox's rows (status, attempts), once none is leased to a worker sending it: a worker
/// records an attempt's outcome just after the receiver answered it.
async fn settled_outbox(app: &TestApp) -> Vec<(String, i32)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<(String, i32, bool)> = sqlx::query_as(
            "SELECT status, attempts,
                    status = 'pending' AND next_attempt_at > now() + interval '5 seconds'
               FROM webhook_outbox ORDER BY type",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if rows.iter().all(|(_, _, leased)| !leased) || Instant::now() > deadline {
            return rows.into_iter().map(|(s, a, _)| (s, a)).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failing_receiver_gets_each_event_once_after_retries_and_the_sdk_verifies_it() {
    let receiver = WebhookReceiver::start(Answer::FailFirst(2)).await;
    let app = spawn_app_with(TestOptions {
        settings: Box::new(local_receivers),
        ..TestOptions::default()
    })
    .await;
    let created = create_webhook(
        &app,
        json!({"url": receiver.url(), "events": ["response.completed", "job.*"]}),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();

    let response: Value = app
        .post_json(
            "/v1/responses",
            &json!({"model": "mock-model", "input": "hello", "background": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    let response_id = id_of(&response);
    let conversation = app.create_conversation(json!({})).await;
    let job = app.turn(&id_of(&conversation), "hello").await;
    let job_id = id_of(&job);

    let received = receiver
        .wait_until(
            "both events delivered",
            Duration::from_secs(30),
            |received| delivered_once_each(received, 2),
        )
        .await;
    let mut deliveries = Vec::new();
    for (kind, data_id) in [
        ("response.completed", &response_id),
        ("job.succeeded", &job_id),
    ] {
        let attempts: Vec<&Received> = received
            .iter()
            .filter(|r| r.json()["type"] == kind)
            .collect();
        assert_eq!(attempts.len(), 3, "{kind}: {attempts:#?}");
        assert!(
            attempts.iter().all(|a| a.id() == attempts[0].id()),
            "one webhook-id on every attempt: {attempts:#?}"
        );
        assert!(attempts.iter().all(|a| a.body == attempts[0].body));
        assert_eq!(
            attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
            [Some(500), Some(500), Some(200)]
        );
        let delivered = attempts[2];
        assert_eq!(delivered.json()["data"]["id"], data_id.as_str());
        assert_eq!(delivered.headers["content-type"], "application/json");
        deliveries.push(json!({
            "headers": delivered.headers,
            "body": String::from_utf8(delivered.body.to_vec()).unwrap(),
            "type": kind,
            "data_id": data_id,
        }));
    }
    // Delivered is final: no attempt can follow.
    assert_eq!(
        settled_outbox(&app).await,
        [("delivered".to_owned(), 3), ("delivered".to_owned(), 3)]
    );

    let env = [
        ("WEBHOOK_SECRET", secret),
        ("DELIVERIES", Value::Array(deliveries).to_string()),
    ];
    run_sdk_script(
        &app,
        "openai_webhooks.py",
        &env,
        "all webhook checks passed",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_costs_the_jobs_nothing() {
    const SLOTS: usize = 4;
    const JOBS: usize = 60;
    let receiver = WebhookReceiver::start(Answer::Never).await;
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|settings| {
            local_receivers(settings);
            settings.webhooks.max_concurrent = SLOTS;
            // Longer than the test: a delivery holds its slot throughout.
            settings.webhooks.timeout_secs = 600;
        }),
        ..TestOptions::default()
    })
    .await;
    create_webhook(&app, json!({"url": receiver.url(), "events": ["job.*"]})).await;
    let conversation = id_of(&app.create_conversation(json!({})).await);

    // Every delivery slot of the worker is held by the receiver that never answers.
    for _ in 0..SLOTS {
        app.turn(&conversation, "fill a slot").await;
    }
    receiver
        .wait_until("every slot held", Duration::from_secs(30), |received| {
            received.len() == SLOTS
        })
        .await;

    // Jobs still run at the speed they would without webhooks.
    let started = Instant::now();
    for _ in 0..JOBS {
        let job = app.turn(&conversation, "and now?").await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "{JOBS} turns took {took:?} while deliveries hung"
    );
    // The deliveries waited for their slots meanwhile: none was sent, none was lost.
    assert_eq!(receiver.received().len(), SLOTS);
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_outbox WHERE status = 'pending'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(pending, (SLOTS + JOBS) as i64);
    app.stop().await;
}

#[tokio::test]
async fn a_name_that_resolves_to_a_private_address_is_refused_when_delivering() {
    // The endpoint was registered while private targets were allowed (or its name resolved to a
    // public address then); the worker checks the address it would connect to, every time.
    let receiver = WebhookReceiver::start(Answer::FailFirst(0)).await;
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|settings| {
            settings.webhooks.retry_base_ms = 50;
            settings.webhooks.poll_interval_ms = 20;
        }),
        ..TestOptions::default()
    })
    .await;
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'tenant-a'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, events, secret)
         VALUES ($1, $2, $3, ARRAY['job.*'], '\\x00112233')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(tenant)
    .bind(&url)
    .execute(&app.pool)
    .await
    .unwrap();
    let conversation = id_of(&app.create_conversation(json!({})).await);
    app.turn(&conversation, "hello").await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        let error: Option<String> =
            sqlx::query_scalar("SELECT last_error FROM webhook_outbox WHERE attempts >= 2")
                .fetch_optional(&app.pool)
                .await
                .unwrap()
                .flatten();
        if let Some(error) = error {
            break error;
        }
        assert!(Instant::now() < deadline, "no attempt was recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(error.contains("not a public address"), "{error}");
    assert!(receiver.received().is_empty(), "{:#?}", receiver.received());
    app.stop().await;
}

#[tokio::test]
async fn a_batch_reports_its_end_once_and_its_lines_report_nothing() {
    use crate::batches::{create_batch, jsonl, request_line, upload, wait_for_batch};

    let receiver = WebhookReceiver::start(Answer::FailFirst(0)).await;
    let app = spawn_app_with(TestOptions {
        settings: Box::new(local_receivers),
        ..TestOptions::default()
    })
    .await;
    create_webhook(
        &app,
        json!({"url": receiver.url(), "events": ["batch.*", "job.*"]}),
    )
    .await;
    let file = upload(&app, &jsonl(&[request_line("a"), request_line("b")])).await;
    let batch = id_of(&create_batch(&app, &file, "24h").await);
    wait_for_batch(&app, &batch, |b| b["status"] == "completed").await;

    let received = receiver
        .wait_until("the batch's event", Duration::from_secs(30), |r| {
            !r.is_empty()
        })
        .await;
    let event = received[0].json();
    assert_eq!(event["type"], "batch.completed", "{event}");
    assert_eq!(event["data"]["id"], batch.as_str());
    // The lines committed before the batch ended: had they owed anything, it would be here.
    let owed: Vec<String> = sqlx::query_scalar("SELECT type FROM webhook_outbox")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(owed, ["batch.completed"]);
    app.stop().await;
}
