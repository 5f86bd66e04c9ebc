//! A worker killed while the provider streams tool calls: the job runs again, and every client (a
//! waiting completion, an SSE subscriber, a stream resumed with `Last-Event-ID`, a poll) ends
//! with exactly one complete answer, never pieces of two attempts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatq_mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Stack, StackOptions};
use crate::shared_tool_calls::calls_of;
use crate::sse::{SseEvent, SseReader};

/// A tool whose arguments are long enough to stream in many pieces.
fn booking_tool() -> Value {
    let properties: serde_json::Map<String, Value> =
        ["origin", "destination", "date", "passenger", "seat", "meal"]
            .iter()
            .map(|name| ((*name).to_owned(), json!({"type": "string"})))
            .collect();
    json!({
        "type": "function",
        "function": {"name": "book_flight", "parameters": {"type": "object", "properties": properties}}
    })
}

/// Tool calls put together from a job's events as a client following the documented rule does:
/// a `job.started` of a later attempt means the reply restarted, so what was built is dropped.
#[derive(Debug, Default)]
struct Assembled {
    attempt: u64,
    /// Per tool call index: (id, name, arguments).
    calls: BTreeMap<u64, (String, String, String)>,
    last_id: u64,
    ended: Option<Value>,
}

impl Assembled {
    fn apply(&mut self, event: &SseEvent) {
        self.last_id = event.id_number();
        let data = event.json();
        match event.kind() {
            "job.started" => {
                let attempt = data["attempt"].as_u64().unwrap();
                if attempt > self.attempt && self.attempt > 0 {
                    self.calls.clear();
                }
                self.attempt = attempt;
            }
            "message.delta" => {
                for piece in data["tool_calls"].as_array().into_iter().flatten() {
                    let call = self
                        .calls
                        .entry(piece["index"].as_u64().unwrap())
                        .or_default();
                    if let Some(id) = piece["id"].as_str() {
                        call.0 = id.to_owned();
                    }
                    call.1 += piece["function"]["name"].as_str().unwrap_or_default();
                    call.2 += piece["function"]["arguments"].as_str().unwrap_or_default();
                }
            }
            "job.succeeded" | "job.failed" | "job.cancelled" => self.ended = Some(data),
            _ => {}
        }
    }

    fn calls(&self) -> Vec<(String, String, String)> {
        self.calls.values().cloned().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_tool_call_leaves_every_client_one_whole_answer() {
    let mut stack = Stack::start(
        "tool_call_sigkill",
        StackOptions {
            workers: 0,
            mock: MockConfig {
                ttft_ms: 100,
                token_delay_ms: 100,
                ..MockConfig::default()
            },
            ..StackOptions::default()
        },
    )
    .await;
    stack.start_worker("worker-0", &[]).await;
    let body = json!({
        "model": "mock-model",
        "messages": [{"role": "user", "content": "Book me a flight to Lisbon"}],
        "tools": [booking_tool()],
    });
    // A client waiting for the whole completion, and one streaming it.
    let waiting = {
        let request = stack
            .client
            .request(Method::POST, "/v1/chat/completions")
            .json(&body)
            .timeout(Duration::from_secs(90));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    let streamed = stack
        .client
        .request(Method::POST, "/v1/chat/completions")
        .json(&streamed_body)
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .unwrap();
    let streamed_job = streamed.headers()["x-chatq-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let streamed_chunks = tokio::spawn(SseReader::new(streamed).collect());

    // An SSE subscriber to the streamed job's events, read until tool-call pieces arrived.
    let events = stack
        .client
        .request(Method::GET, &format!("/v1/jobs/{streamed_job}/events"))
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .unwrap();
    let mut subscriber = SseReader::new(events);
    let mut seen = Assembled::default();
    while seen.calls.values().map(|c| c.2.len()).sum::<usize>() < 20 {
        let event = subscriber.next().await.expect("the job streams tool calls");
        seen.apply(&event);
    }
    let resume_after = seen.last_id;
    stack.workers[0].sigkill().await;
    let killed_at = Instant::now();
    stack.start_worker("worker-1", &[]).await;

    // The live subscriber keeps reading through the retry.
    let mut live = seen;
    while live.ended.is_none() {
        let event = subscriber
            .next()
            .await
            .expect("the stream ends with the job");
        live.apply(&event);
    }
    let recovered = killed_at.elapsed();
    let ended = live.ended.clone().unwrap();
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(
        ended["attempts"], 2,
        "the job ran again after the kill: {ended}"
    );
    let final_calls = calls_of(&ended["reply"]["choices"][0]["message"]);
    assert_eq!(final_calls.len(), 1, "{ended}");
    let arguments: Value = serde_json::from_str(&final_calls[0].2).expect("whole JSON arguments");
    assert_eq!(arguments.as_object().unwrap().len(), 6);
    assert_eq!(
        live.calls(),
        final_calls,
        "the live subscriber ends with the final answer"
    );

    // A stream resumed after the last event seen before the kill.
    let resumed = stack
        .client
        .request(Method::GET, &format!("/v1/jobs/{streamed_job}/events"))
        .header("Last-Event-ID", resume_after.to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let mut continued = Assembled {
        attempt: 1,
        ..Assembled::default()
    };
    for event in SseReader::new(resumed).collect().await {
        continued.apply(&event);
    }
    assert!(continued.ended.is_some());
    assert_eq!(
        continued.calls(),
        final_calls,
        "the resumed stream ends with the final answer"
    );

    // A poll.
    let polled = stack.client.job(&streamed_job).await;
    assert_eq!(
        calls_of(&polled["reply"]["choices"][0]["message"]),
        final_calls
    );

    // The client that waited got one whole answer, with whole JSON arguments.
    let whole: Value = waiting.await.unwrap().json().await.unwrap();
    let whole_calls = calls_of(&whole["choices"][0]["message"]);
    assert_eq!(whole_calls.len(), 1, "{whole}");
    serde_json::from_str::<Value>(&whole_calls[0].2).expect("whole JSON arguments");
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");

    // The streamed completion had sent pieces of the first attempt: it ends with an error that
    // says so, never with a second attempt's pieces after the first's.
    let chunks = streamed_chunks.await.unwrap();
    let last = chunks.last().expect("the stream sent something").json();
    assert_eq!(last["error"]["code"], "reply_restarted", "{last}");
    crate::ledger::note(
        &stack,
        &format!(
            "worker killed mid tool call: answered whole after {:.1} s; poll, SSE, resumed SSE and waiting client agree",
            recovered.as_secs_f64()
        ),
    );
    stack.stop().await;
}
