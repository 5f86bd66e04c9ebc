//! `chatq batch …` end to end: the binary against a running chatq, over HTTP with a key.

use std::path::PathBuf;

use serde_json::Value;

use crate::batches::{jsonl, request_line};
use crate::helpers::{TestApp, spawn_app, unique};

/// Runs `chatq batch <args>` against `app`; returns (exit code, stdout, stderr).
async fn chatq_batch(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatq"))
        .arg("batch")
        .args(args)
        .args(["--url", &app.url("/v1"), "--no-progress"])
        .env("OPENAI_API_KEY", &app.key)
        .output()
        .await
        .expect("chatq runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("cq_cli_"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test]
async fn the_cli_submits_waits_lists_and_downloads_a_batch() {
    let app = spawn_app().await;
    let mut lines: Vec<Value> = (0..30).map(|i| request_line(&format!("cli-{i}"))).collect();
    let mut bad = request_line("cli-bad");
    bad["body"]["temperature"] = serde_json::json!(9);
    lines.push(bad);
    let input = scratch("requests.jsonl");
    std::fs::write(&input, jsonl(&lines)).unwrap();

    let (code, stdout, stderr) = chatq_batch(
        &app,
        &[
            "submit",
            input.to_str().unwrap(),
            "--window",
            "1h",
            "--wait",
        ],
    )
    .await;
    let batch: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stdout}{stderr}"));
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(code, 2, "completed with a failed line exits 2: {stderr}");
    let id = batch["id"].as_str().unwrap();

    let (code, stdout, _) = chatq_batch(&app, &["list"]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains(id) && stdout.contains("30/31 done, 1 failed"),
        "{stdout}"
    );

    let (code, stdout, _) = chatq_batch(&app, &["status", id]).await;
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["request_counts"]["completed"], 30);

    let output = scratch("out.jsonl");
    let errors = scratch("err.jsonl");
    let (code, stdout, stderr) = chatq_batch(
        &app,
        &[
            "results",
            id,
            "-o",
            output.to_str().unwrap(),
            "--errors",
            errors.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (
            summary["output_lines"].as_u64(),
            summary["error_lines"].as_u64()
        ),
        (Some(30), Some(1))
    );
    let answered = std::fs::read_to_string(&output).unwrap();
    assert_eq!(answered.lines().count(), 30);
    assert!(
        std::fs::read_to_string(&errors)
            .unwrap()
            .contains("cli-bad")
    );

    // A finished batch cannot be cancelled: exit 1, and the API's reason on stderr.
    let (code, _, stderr) = chatq_batch(&app, &["cancel", id]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("409") && stderr.contains("cannot be cancelled"),
        "{stderr}"
    );
    // A wrong key is told so.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatq"))
        .args([
            "batch",
            "list",
            "--url",
            &app.url("/v1"),
            "--key",
            "sk-wrong",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
    app.stop().await;
}
