//! A worker killed mid-response: the response's job runs again, the response completes exactly
//! once, and its event stream (followed live, and resumed with `starting_after` from before the
//! kill) numbers its events without a gap or a repeat and carries the reply once.

use std::time::{Duration, Instant};

use chatq_mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Stack, StackOptions};
use crate::sse::SseReader;

/// Reads response events until `done` says stop; returns them as JSON.
async fn read_until(reader: &mut SseReader, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut events = Vec::new();
    while !done(&events) {
        let Some(event) = reader.next().await else {
            break;
        };
        let data = event.json();
        assert_eq!(
            Some(event.kind()),
            data["type"].as_str(),
            "event name and type agree"
        );
        events.push(data);
    }
    events
}

fn numbers(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect()
}

fn text_of(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect()
}

fn is_final(e: &Value) -> bool {
    matches!(
        e["type"].as_str(),
        Some("response.completed" | "response.failed" | "response.incomplete")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_response_completes_it_once_and_its_stream_resumes_exactly() {
    let mut stack = Stack::start(
        "response_sigkill",
        StackOptions {
            workers: 0,
            mock: MockConfig {
                ttft_ms: 100,
                tokens: 40,
                token_delay_ms: 60,
                ..MockConfig::default()
            },
            ..StackOptions::default()
        },
    )
    .await;
    stack.start_worker("worker-0", &[]).await;
    let streamed = stack
        .client
        .request(Method::POST, "/v1/responses")
        .json(&json!({"model": "mock-model", "input": "Explain work queues", "background": true, "stream": true}))
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .unwrap();
    assert!(streamed.status().is_success(), "{}", streamed.status());
    let mut live = SseReader::new(streamed);
    let before = read_until(&mut live, |events| {
        events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .count()
            >= 5
    })
    .await;
    let id = before[0]["response"]["id"].as_str().unwrap().to_owned();
    let resume_after = before.last().unwrap()["sequence_number"].as_u64().unwrap();

    stack.workers[0].sigkill().await;
    let killed_at = Instant::now();
    stack.start_worker("worker-1", &[]).await;

    // The live stream goes on through the retry to the end.
    let after = read_until(&mut live, |events| events.last().is_some_and(is_final)).await;
    let recovered = killed_at.elapsed();
    let live_events: Vec<Value> = before.iter().chain(&after).cloned().collect();
    let last = live_events.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{last}");
    let reply = last["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        numbers(&live_events),
        (0..live_events.len() as u64).collect::<Vec<_>>(),
        "the live stream numbers its events without a gap"
    );
    assert_eq!(
        text_of(&live_events),
        reply,
        "the live stream carries the reply once"
    );
    assert_eq!(
        live_events
            .iter()
            .filter(|e| e["type"] == "response.output_item.added")
            .count(),
        1
    );

    // A stream resumed from before the kill: the same events under the same numbers.
    let resumed = stack
        .client
        .request(
            Method::GET,
            &format!("/v1/responses/{id}?stream=true&starting_after={resume_after}"),
        )
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(resumed);
    let rest = read_until(&mut reader, |events| events.last().is_some_and(is_final)).await;
    assert_eq!(
        rest, after,
        "the resumed stream is the live one's continuation, exactly"
    );

    // The response: completed once, by one job that ran twice, with one reply.
    let (_, response) = stack
        .client
        .once(Method::GET, &format!("/v1/responses/{id}"))
        .await;
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(response["output"].as_array().unwrap().len(), 1);
    assert_eq!(response["output"][0]["content"][0]["text"], reply.as_str());
    let job_id = format!("job_{}", id.trim_start_matches("resp_"));
    let job = stack.client.job(&job_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["attempts"], 2,
        "the job ran again after the kill: {job}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1, "one job for the response");
    crate::ledger::note(
        &stack,
        &format!(
            "worker killed mid-response: completed once after {:.1} s; live and resumed streams agree",
            recovered.as_secs_f64()
        ),
    );
    stack.stop().await;
}
