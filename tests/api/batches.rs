//! The Files and Batch APIs: the OpenAI SDK's whole flow, tenancy, refused uploads and batches,
//! cancel and expiry.

use std::collections::HashMap;
use std::time::Duration;

use chatq_mock_llm::MockConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestOptions, assert_error, run_sdk_script, spawn_app, spawn_app_with,
};

#[path = "../support/batch_files.rs"]
mod batch_files;

use batch_files::{custom_id_asked, upload_form};
pub use batch_files::{jsonl, request_line};

/// `POST /v1/files` with this key.
async fn upload_as(app: &TestApp, key: &str, purpose: &str, data: &[u8]) -> reqwest::Response {
    let (content_type, body) = upload_form(purpose, data);
    app.request_as(key, Method::POST, "/v1/files")
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Uploads a batch file; returns its id.
pub(crate) async fn upload(app: &TestApp, data: &[u8]) -> String {
    let response = upload_as(app, &app.key, "batch", data).await;
    let status = response.status();
    let file: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{file}");
    file["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn create_batch(app: &TestApp, file: &str, window: &str) -> Value {
    let response = app
        .post_json(
            "/v1/batches",
            &json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": window}),
        )
        .await;
    let status = response.status();
    let batch: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{batch}");
    batch
}

/// Polls the batch until `done` says so (or panics after a minute).
pub(crate) async fn wait_for_batch(
    app: &TestApp,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let batch = app.get_ok(&format!("/v1/batches/{id}")).await;
        if done(&batch) {
            return batch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch did not get there: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn ended(batch: &Value) -> bool {
    matches!(
        batch["status"].as_str(),
        Some("completed" | "failed" | "expired" | "cancelled")
    )
}

/// A file's lines, parsed.
async fn file_lines(app: &TestApp, file: &Value) -> Vec<Value> {
    let response = app
        .get(&format!("/v1/files/{}/content", file.as_str().unwrap()))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// How many times the provider was asked to answer each custom id.
fn provider_calls(app: &TestApp) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for request in app.mock.requests() {
        *calls.entry(custom_id_asked(&request.body)).or_insert(0) += 1;
    }
    calls
}

fn counts(batch: &Value) -> (i64, i64, i64) {
    let counts = &batch["request_counts"];
    (
        counts["total"].as_i64().unwrap(),
        counts["completed"].as_i64().unwrap(),
        counts["failed"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn the_openai_sdk_runs_a_batch_of_good_and_bad_lines() {
    let app = spawn_app().await;
    run_sdk_script(
        &app,
        "openai_batches.py",
        &[],
        "all batch SDK checks passed",
    )
    .await;
    let calls = provider_calls(&app);
    assert_eq!(
        calls.len(),
        24,
        "only the good lines reach the provider: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|(id, n)| id.starts_with("good-") && *n == 1),
        "each good line is sent to the provider once: {calls:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn another_tenants_files_and_batches_are_not_found() {
    let app = spawn_app().await;
    let file = upload(&app, &jsonl(&[request_line("a")])).await;
    let batch = create_batch(&app, &file, "24h").await;
    let batch_id = batch["id"].as_str().unwrap();
    let other = app.other_tenant_key("tenant-b").await;
    for path in [
        format!("/v1/files/{file}"),
        format!("/v1/files/{file}/content"),
        format!("/v1/batches/{batch_id}"),
    ] {
        let response = app
            .request_as(&other, Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found_error").await;
    }
    let cancel = app
        .request_as(
            &other,
            Method::POST,
            &format!("/v1/batches/{batch_id}/cancel"),
        )
        .send()
        .await
        .unwrap();
    assert_error(cancel, StatusCode::NOT_FOUND, "not_found_error").await;
    let delete = app
        .request_as(&other, Method::DELETE, &format!("/v1/files/{file}"))
        .send()
        .await
        .unwrap();
    assert_error(delete, StatusCode::NOT_FOUND, "not_found_error").await;
    let start = app
        .request_as(&other, Method::POST, "/v1/batches")
        .json(&json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap();
    assert_error(start, StatusCode::NOT_FOUND, "not_found_error").await;
    let listed: Value = app
        .request_as(&other, Method::GET, "/v1/batches")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"],
        json!([]),
        "another tenant lists none of them"
    );
    let files: Value = app
        .request_as(&other, Method::GET, "/v1/files")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(files["data"], json!([]));
    // The owner still has both.
    app.get_ok(&format!("/v1/files/{file}")).await;
    app.get_ok(&format!("/v1/batches/{batch_id}")).await;
    app.stop().await;
}

#[tokio::test]
async fn a_file_of_another_purpose_cannot_start_a_batch() {
    let app = spawn_app().await;
    let response = upload_as(&app, &app.key, "user_data", &jsonl(&[request_line("a")])).await;
    let file: Value = response.json().await.unwrap();
    let response = app
        .post_json(
            "/v1/batches",
            &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        )
        .await;
    let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    assert_eq!(error["param"], "input_file_id");
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(batches, 0, "nothing was recorded");
    app.stop().await;
}

#[tokio::test]
async fn oversized_and_malformed_uploads_are_refused_and_leave_nothing_behind() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|settings| {
            settings.limits.max_file_bytes = 64 * 1024;
            settings.limits.max_file_lines = 3;
        }),
        ..TestOptions::default()
    })
    .await;
    let too_big = vec![b'x'; 200 * 1024];
    let response = upload_as(&app, &app.key, "batch", &too_big).await;
    let error = assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "request_too_large").await;
    assert!(
        error["message"].as_str().unwrap().contains("65536"),
        "{error}"
    );
    let four_lines = jsonl(&[
        request_line("a"),
        request_line("b"),
        request_line("c"),
        request_line("d"),
    ]);
    let response = upload_as(&app, &app.key, "batch", &four_lines).await;
    let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    assert_eq!(error["code"], "too_many_lines");
    let response = upload_as(&app, &app.key, "pictures", b"{}\n").await;
    let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    assert_eq!(error["param"], "purpose");
    let response = app
        .request(Method::POST, "/v1/files")
        .json(&json!({"purpose": "batch"}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    let response = app
        .request(Method::POST, "/v1/files")
        .header("content-type", "multipart/form-data; boundary=x")
        .body("--x\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbat")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
    let (files, chunks): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM file_chunks)")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (files, chunks),
        (0, 0),
        "a refused upload leaves nothing behind"
    );
    // Within the limits, the same form is accepted.
    let three = jsonl(&[request_line("a"), request_line("b"), request_line("c")]);
    upload(&app, &three).await;
    app.stop().await;
}

#[tokio::test]
async fn lines_that_are_not_requests_fail_the_batch_line_by_line() {
    let app = spawn_app().await;
    let mut wrong_method = request_line("c");
    wrong_method["method"] = json!("GET");
    let mut wrong_url = request_line("d");
    wrong_url["url"] = json!("/v1/embeddings");
    let mut text = String::new();
    for line in [
        request_line("a").to_string(),
        "{not json".to_owned(),
        json!({"method": "POST", "url": "/v1/chat/completions", "body": {}}).to_string(),
        wrong_method.to_string(),
        wrong_url.to_string(),
        request_line("a").to_string(),
    ] {
        text.push_str(&line);
        text.push('\n');
    }
    let file = upload(&app, text.as_bytes()).await;
    let batch = create_batch(&app, &file, "24h").await;
    // Answered at once; the input is read after.
    assert_eq!(batch["status"], "validating", "{batch}");
    assert_eq!(batch["request_counts"]["total"], 0, "{batch}");
    let batch = wait_for_batch(&app, batch["id"].as_str().unwrap(), ended).await;
    assert_eq!(batch["status"], "failed", "{batch}");
    assert!(batch["failed_at"].is_i64());
    let errors: Vec<(i64, String)> = batch["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_i64().unwrap(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (2, "invalid_json_line".to_owned()),
            (3, "missing_required_parameter".to_owned()),
            (4, "invalid_method".to_owned()),
            (5, "invalid_url".to_owned()),
            (6, "duplicate_custom_id".to_owned()),
        ]
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "no line of a failed batch runs");
    for (body, param) in [
        (
            json!({"input_file_id": file, "endpoint": "/v1/embeddings", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "soon"}),
            "completion_window",
        ),
        (
            json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "30d"}),
            "completion_window",
        ),
        (
            json!({"input_file_id": "file_xyz", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
        (
            json!({"endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
    ] {
        let response = app.post_json("/v1/batches", &body).await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request_error").await;
        assert_eq!(error["param"], param, "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_batch_keeps_what_finished_and_starts_nothing_new() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 100,
            ..MockConfig::default()
        },
        settings: Box::new(|settings| settings.worker.concurrency = 2),
        ..TestOptions::default()
    })
    .await;
    let ids: Vec<String> = (0..40).map(|i| format!("line-{i}")).collect();
    let file = upload(
        &app,
        &jsonl(&ids.iter().map(|id| request_line(id)).collect::<Vec<_>>()),
    )
    .await;
    let batch = create_batch(&app, &file, "24h").await;
    let id = batch["id"].as_str().unwrap().to_owned();
    // The counts are live: wait until some lines are done, then cancel.
    wait_for_batch(&app, &id, |b| {
        b["request_counts"]["completed"].as_i64() >= Some(2)
    })
    .await;
    let response = app
        .request(Method::POST, &format!("/v1/batches/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cancelling: Value = response.json().await.unwrap();
    assert!(
        matches!(
            cancelling["status"].as_str(),
            Some("cancelling" | "cancelled")
        ),
        "{cancelling}"
    );
    let batch = wait_for_batch(&app, &id, ended).await;
    assert_eq!(batch["status"], "cancelled", "{batch}");
    assert!(batch["cancelling_at"].is_i64() && batch["cancelled_at"].is_i64());
    let (total, completed, failed) = counts(&batch);
    assert_eq!(total, 40);
    assert_eq!(completed + failed, total, "{batch}");
    assert!(completed >= 2 && completed < total, "{batch}");
    let output = file_lines(&app, &batch["output_file_id"]).await;
    assert_eq!(
        output.len() as i64,
        completed,
        "every finished line is kept"
    );
    let errors = file_lines(&app, &batch["error_file_id"]).await;
    assert_eq!(errors.len() as i64, failed);
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "batch_cancelled"),
        "{errors:?}"
    );
    let calls = provider_calls(&app);
    assert_eq!(
        calls.values().sum::<usize>() as i64,
        completed,
        "no line started after the cancel: {calls:?}"
    );
    let again = app
        .request(Method::POST, &format!("/v1/batches/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "cancelling a cancelled batch changes nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn lines_not_done_when_the_window_ends_expire() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 150,
            ..MockConfig::default()
        },
        settings: Box::new(|settings| {
            settings.worker.concurrency = 1;
            settings.limits.batch_min_window_secs = 1;
        }),
        ..TestOptions::default()
    })
    .await;
    let ids: Vec<String> = (0..40).map(|i| format!("line-{i}")).collect();
    let file = upload(
        &app,
        &jsonl(&ids.iter().map(|id| request_line(id)).collect::<Vec<_>>()),
    )
    .await;
    let batch = create_batch(&app, &file, "2s").await;
    assert_eq!(batch["completion_window"], "2s");
    let id = batch["id"].as_str().unwrap().to_owned();
    let batch = wait_for_batch(&app, &id, ended).await;
    assert_eq!(batch["status"], "expired", "{batch}");
    assert!(batch["expired_at"].is_i64());
    let (total, completed, failed) = counts(&batch);
    assert_eq!(total, 40);
    assert_eq!(completed + failed, total, "the counts add up: {batch}");
    assert!(completed > 0 && completed < total, "{batch}");
    let output = file_lines(&app, &batch["output_file_id"]).await;
    let errors = file_lines(&app, &batch["error_file_id"]).await;
    assert_eq!(output.len() as i64, completed);
    assert_eq!(errors.len() as i64, failed);
    assert!(
        errors.iter().all(|e| e["error"]["code"] == "batch_expired"),
        "{errors:?}"
    );
    let mut seen: Vec<&str> = output
        .iter()
        .chain(&errors)
        .map(|line| line["custom_id"].as_str().unwrap())
        .collect();
    seen.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(seen, expected, "every line is reported once");
    app.stop().await;
}

#[tokio::test]
async fn lines_are_retried_and_reach_the_error_file_only_when_they_fail_for_good() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            failure_rate: 1.0,
            retry_after_secs: Some(1),
            ..MockConfig::default()
        },
        settings: Box::new(|settings| settings.nats.job_max_attempts = 5),
        ..TestOptions::default()
    })
    .await;
    let ids = ["retry-a", "retry-b", "retry-c"];
    let file = upload(&app, &jsonl(&ids.map(request_line))).await;
    let batch = create_batch(&app, &file, "24h").await;
    let id = batch["id"].as_str().unwrap().to_owned();
    // Every line has failed at least once and waits for its next attempt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let retried: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE batch_id IS NOT NULL AND attempts >= 2",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if retried == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lines were not retried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running = app.get_ok(&format!("/v1/batches/{id}")).await;
    assert_eq!(running["status"], "in_progress");
    assert_eq!(
        counts(&running),
        (3, 0, 0),
        "a line being retried has not failed: {running}"
    );
    assert!(file_lines(&app, &running["error_file_id"]).await.is_empty());
    // The provider recovers: every line is answered, none is in the error file.
    app.mock.set_config(MockConfig::default());
    let batch = wait_for_batch(&app, &id, ended).await;
    assert_eq!(
        (batch["status"].as_str(), counts(&batch)),
        (Some("completed"), (3, 3, 0)),
        "{batch}"
    );
    assert!(file_lines(&app, &batch["error_file_id"]).await.is_empty());
    assert_eq!(file_lines(&app, &batch["output_file_id"]).await.len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_line_that_fails_every_attempt_is_in_the_error_file_once() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            failure_rate: 1.0,
            retry_after_secs: Some(0),
            ..MockConfig::default()
        },
        settings: Box::new(|settings| settings.nats.job_max_attempts = 3),
        ..TestOptions::default()
    })
    .await;
    let file = upload(&app, &jsonl(&[request_line("doomed")])).await;
    let batch = create_batch(&app, &file, "24h").await;
    let id = batch["id"].as_str().unwrap().to_owned();
    let batch = wait_for_batch(&app, &id, ended).await;
    assert_eq!(
        (batch["status"].as_str(), counts(&batch)),
        (Some("completed"), (1, 0, 1)),
        "{batch}"
    );
    assert_eq!(
        provider_calls(&app).get("doomed"),
        Some(&3),
        "one call per attempt"
    );
    let errors = file_lines(&app, &batch["error_file_id"]).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let response = &errors[0]["response"];
    assert!(
        response["status_code"].as_u64().is_some_and(|s| s >= 500),
        "{errors:?}"
    );
    assert!(response["body"]["error"]["message"].is_string());
    assert!(file_lines(&app, &batch["output_file_id"]).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_running_batch_does_not_hold_up_a_chat_completion() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 100,
            ..MockConfig::default()
        },
        settings: Box::new(|settings| settings.worker.concurrency = 2),
        ..TestOptions::default()
    })
    .await;
    let lines: Vec<Value> = (0..200)
        .map(|i| request_line(&format!("line-{i}")))
        .collect();
    let file = upload(&app, &jsonl(&lines)).await;
    let batch = create_batch(&app, &file, "24h").await;
    let id = batch["id"].as_str().unwrap().to_owned();
    wait_for_batch(&app, &id, |b| {
        b["request_counts"]["completed"].as_i64() >= Some(4)
    })
    .await;
    let started = tokio::time::Instant::now();
    let response = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "mock-model", "messages": [{"role": "user", "content": "Answer interactive"}]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let waited = started.elapsed();
    let batch = app.get_ok(&format!("/v1/batches/{id}")).await;
    // Some 196 batch lines were queued ahead of it (10 s of work on two slots): it took the next
    // free slot instead.
    assert_eq!(batch["status"], "in_progress", "{batch}");
    assert!(
        waited < Duration::from_secs(3),
        "the completion waited {waited:?}"
    );
    app.stop().await;
}

/// Published copies of the batch's lines, as Postgres records them.
async fn published_lines(app: &TestApp, batch: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE batch_id = $1::uuid AND published_at IS NOT NULL",
    )
    .bind(batch.trim_start_matches("batch_"))
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_larger_than_the_queue_fills_only_the_batch_lane() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.nats.queue_max_jobs = 3),
        ..TestOptions::default()
    })
    .await;
    let lines: Vec<Value> = (0..10)
        .map(|i| request_line(&format!("line-{i}")))
        .collect();
    let file = upload(&app, &jsonl(&lines)).await;
    let batch = create_batch(&app, &file, "24h").await;
    let id = batch["id"].as_str().unwrap().to_owned();
    // The batch lane takes three lines; the other seven wait in Postgres for room.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while published_lines(&app, &id).await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "lines never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batch = app.get_ok(&format!("/v1/batches/{id}")).await;
    assert_eq!(counts(&batch), (10, 0, 0), "{batch}");

    // The interactive lane still has all its room.
    for _ in 0..3 {
        let conversation = app.create_conversation(json!({})).await;
        app.send(conversation["id"].as_str().unwrap(), "still admitted")
            .await;
    }
    assert_eq!(published_lines(&app, &id).await, 3);
    app.stop().await;
}

#[tokio::test]
async fn lines_beyond_a_full_batch_lane_run_as_it_drains() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            s.nats.queue_max_jobs = 3;
            s.worker.reconcile_interval_secs = 1;
            s.worker.reconcile_after_secs = 0;
        }),
        ..TestOptions::default()
    })
    .await;
    let lines: Vec<Value> = (0..12)
        .map(|i| request_line(&format!("line-{i}")))
        .collect();
    let file = upload(&app, &jsonl(&lines)).await;
    let batch = create_batch(&app, &file, "24h").await;
    let id = batch["id"].as_str().unwrap().to_owned();
    let batch = wait_for_batch(&app, &id, ended).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(counts(&batch), (12, 12, 0));
    let calls = provider_calls(&app);
    for i in 0..12 {
        assert_eq!(calls.get(&format!("line-{i}")), Some(&1), "{calls:?}");
    }
    app.stop().await;
}
