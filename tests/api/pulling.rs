//! How an idle worker's long poll hands jobs to free slots. Its pull request to the front of the
//! interactive lane asks for as many jobs as it has free slots; when that request is filled
//! while its request to the overflow is still open, the worker pulls from the front again as
//! soon as a slot is free, instead of waiting for the overflow's request to expire (up to half a
//! second, with slots free and jobs queued).

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

use chatq_mock_llm::MockConfig;

use crate::helpers::{TestApp, TestOptions, spawn_app_with};

/// The worker's slots: an eighth of them, one, is kept for the front.
const SLOTS: usize = 8;
/// Clients each sending a chat completion as soon as its last one is answered: fewer than the
/// slots, so a slot is always free, and enough that a poll's request is filled within it.
const CLIENTS: usize = 7;
const COMPLETIONS_EACH: usize = 20;
/// A queue wait this long, with a slot free all along, is a job left waiting for a poll to
/// expire: pulling and claiming take a few milliseconds.
const STALLED_MS: f64 = 300.0;

async fn complete_in_turn(app: &TestApp, client: usize) {
    for turn in 0..COMPLETIONS_EACH {
        let response = app
            .request(Method::POST, "/v1/chat/completions")
            .json(&json!({
                "model": "mock-model",
                "messages": [{"role": "user", "content": format!("client {client}, turn {turn}")}],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn jobs_do_not_wait_for_a_poll_to_expire_while_slots_are_free() {
    let app = spawn_app_with(TestOptions {
        mock: MockConfig {
            ttft_ms: 0,
            tokens: 1,
            ..MockConfig::default()
        },
        settings: Box::new(|s| {
            s.worker.concurrency = SLOTS;
            // Every job at the front: one tenant with a few jobs queued keeps its fair share.
            s.limits.fair_share_queued_jobs = 1_000;
        }),
        ..TestOptions::default()
    })
    .await;

    join_all((0..CLIENTS).map(|client| complete_in_turn(&app, client))).await;

    let waits: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM started_at - created_at) * 1000)::float8 FROM jobs
          WHERE status = 'succeeded'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(waits.len(), CLIENTS * COMPLETIONS_EACH);
    let stalled = waits.iter().filter(|&&wait| wait >= STALLED_MS).count();
    let worst = waits.iter().copied().fold(0.0, f64::max);
    // Left waiting, about a third of the jobs stall (half a second in each poll); a loaded
    // machine may delay a few.
    assert!(
        stalled * 10 < waits.len(),
        "{stalled} of {} jobs waited {STALLED_MS} ms or more in the queue with a slot free \
         (longest {worst:.0} ms)",
        waits.len()
    );
    app.stop().await;
}
