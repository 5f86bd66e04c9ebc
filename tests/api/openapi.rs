//! The published contract: `GET /openapi.json` documents every operation the router serves, and
//! schemathesis, generating requests from it, finds no server error, no answer the document does
//! not describe, and no refused request that wrote anything.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{TestOptions, database_url, spawn_app, spawn_app_with};

#[tokio::test]
async fn the_document_is_served_without_a_key_and_every_operation_in_it_is_routed() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        document["openapi"]
    );
    assert!(document["components"]["schemas"]["ErrorBody"].is_object());
    assert_eq!(
        document["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );

    let paths = document["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            operations += 1;
            if path.starts_with("/v1/") {
                // Every API operation names the key scheme and its error answers.
                let security = operation.get("security").unwrap_or(&document["security"]);
                assert_eq!(
                    security[0]["api_key"],
                    Value::Array(vec![]),
                    "{method} {path}"
                );
                for status in ["400", "401", "404", "429"] {
                    assert!(
                        operation["responses"][status].is_object(),
                        "{method} {path} documents no {status}"
                    );
                }
            }
            // Served: whatever the request's faults (an id of no kind, no body), the router
            // knows the route and the method.
            let concrete = path.replace("{id}", "x").replace("{job_id}", "x");
            let response = app
                .http
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(&app.key)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                let body: Value = response.json().await.unwrap();
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    !message.starts_with("Unknown route"),
                    "{method} {path}: {message}"
                );
            }
        }
    }
    assert!(operations >= 40, "only {operations} operations documented");
}

/// The checks schemathesis runs: its own, except the two that would hold the document to every
/// setting-dependent limit (a message's length, `max_tokens`) and to text rules JSON Schema
/// cannot say (no NUL character), plus ours from `tests/fuzz/schemathesis_hooks.py`.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
    response_headers_conformance,response_schema_conformance,missing_required_header,\
    unsupported_method,use_after_free,ensure_resource_availability,ignored_auth,\
    refused_requests_write_nothing";

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let app = spawn_app_with(TestOptions::default()).await;
    let python = std::env::var("CQTEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "CQTEST_PYTHON is not set: run the suite with scripts/test, which installs schemathesis"
        )
    });
    let schemathesis = Path::new(&python).with_file_name("st");
    let hooks = format!("{}/tests/fuzz", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(&schemathesis)
        .args(["run", &app.url("/openapi.json")])
        .args(["--url", &app.url("")])
        .args(["--header", &format!("Authorization: Bearer {}", app.key)])
        .args(["--checks", CHECKS])
        .args(["--workers", "1", "--max-examples", "20", "--seed", "1"])
        .args(["--request-timeout", "20"])
        .arg("--no-color")
        // Its cache (.schemathesis/) goes where the build's scratch files go.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", &hooks)
        .env("CHATQ_FUZZ_DATABASE_URL", database_url(&app.database))
        .output()
        .await
        .unwrap_or_else(|err| panic!("{} runs: {err}", schemathesis.display()));
    let report = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    // The summary is part of the test's output (nextest shows it: .config/nextest.toml).
    let summary = report
        .split_once("SUMMARY")
        .map_or(report.as_ref(), |(_, summary)| summary);
    eprintln!("schemathesis summary:{summary}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{errors}"
    );
}
