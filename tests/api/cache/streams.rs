//! A cached reply streams: the same kinds of events, deltas and terminal event as a miss.

use reqwest::Method;
use serde_json::{Value, json};

use super::{answer_with, complete, deterministic, provider_calls};
use crate::helpers::{TestApp, spawn_app};
use crate::sse::SseReader;

/// A streamed completion: its `x-chatq-cache` header, its job id, and its chunks (`[DONE]` last).
async fn stream(app: &TestApp, question: &str) -> (String, String, Vec<String>) {
    let mut body = deterministic(question);
    body["stream"] = json!(true);
    let response = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    let (cache, job) = (header("x-chatq-cache"), header("x-chatq-job-id"));
    let chunks = SseReader::new(response)
        .collect()
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    (cache, job, chunks)
}

fn content_pieces(chunks: &[String]) -> Vec<String> {
    chunks
        .iter()
        .filter(|c| *c != "[DONE]")
        .filter_map(|c| {
            let chunk: Value = serde_json::from_str(c).unwrap();
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|piece| !piece.is_empty())
        .collect()
}

fn finish_reasons(chunks: &[String]) -> Vec<String> {
    chunks
        .iter()
        .filter(|c| *c != "[DONE]")
        .filter_map(|c| {
            let chunk: Value = serde_json::from_str(c).unwrap();
            chunk["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The kinds of a job's events, as `GET /v1/jobs/{id}/events` replays them, deltas collapsed.
async fn event_kinds(app: &TestApp, job: &str) -> Vec<String> {
    let response = app
        .request(Method::GET, &format!("/v1/jobs/{job}/events"))
        .send()
        .await
        .unwrap();
    let mut kinds: Vec<String> = Vec::new();
    for event in SseReader::new(response).collect().await {
        let kind = event.kind().to_owned();
        if kinds.last() != Some(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

#[tokio::test]
async fn cache_a_cached_reply_streams_like_a_miss() {
    let app = spawn_app().await;
    // Twelve words: within the mock's sixteen tokens.
    let text = "one two three four five six seven eight nine ten eleven twelve";
    answer_with(&app, text);
    let (miss, miss_job, miss_chunks) = stream(&app, "stream it").await;
    assert_eq!(miss, "miss");
    answer_with(&app, "not this");
    let (hit, hit_job, hit_chunks) = stream(&app, "stream it").await;
    assert_eq!(hit, "hit");
    assert_eq!(provider_calls(&app), 1);

    let pieces = content_pieces(&hit_chunks);
    assert_eq!(pieces.concat(), content_pieces(&miss_chunks).concat());
    assert_eq!(pieces.concat(), text);
    assert!(
        pieces.len() > 1,
        "a cached reply arrives as a stream of deltas: {pieces:?}"
    );
    assert_eq!(finish_reasons(&hit_chunks), finish_reasons(&miss_chunks));
    assert_eq!(hit_chunks.last().unwrap(), "[DONE]");

    let kinds = event_kinds(&app, &hit_job).await;
    assert_eq!(kinds, event_kinds(&app, &miss_job).await);
    assert_eq!(
        kinds,
        [
            "job.queued",
            "job.started",
            "message.delta",
            "job.succeeded"
        ]
    );

    // A stream's reply fills the cache for a later whole completion, too.
    let whole = complete(&app, &deterministic("stream it")).await;
    assert_eq!((whole.cache.as_str(), whole.content()), ("hit", text));
    app.stop().await;
}
