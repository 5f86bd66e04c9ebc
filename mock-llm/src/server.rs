//! The mock's HTTP handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chatq_common::chat::ChatMessage;
use futures::StreamExt;
use rand::Rng;
use serde_json::{Value, json};

use super::answer::{self, Piece};
use super::embedding;
use super::encode::{piece_delta, whole_choice};
use super::reply::prompt_tokens;
use super::{
    Fault, MAX_ARRIVALS, MAX_RECORDED, MockConfig, MockState, MockStats, RecordedMessage,
    RecordedRequest,
};

pub(super) fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/stats", get(stats))
        .route("/requests", get(requests))
        .route("/control", post(control))
        .route("/reset", post(reset))
        .with_state(state)
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "chatq-mock"}],
    }))
}

async fn stats(State(state): State<Arc<MockState>>) -> Json<MockStats> {
    Json(state.stats.lock().map(|s| s.clone()).unwrap_or_default())
}

async fn requests(State(state): State<Arc<MockState>>) -> Json<Vec<RecordedRequest>> {
    Json(
        state
            .recorded
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default(),
    )
}

async fn control(
    State(state): State<Arc<MockState>>,
    Json(config): Json<MockConfig>,
) -> StatusCode {
    if let Ok(mut current) = state.config.lock() {
        *current = config;
    }
    StatusCode::NO_CONTENT
}

async fn reset(State(state): State<Arc<MockState>>) -> StatusCode {
    state.with_stats(|s| {
        let in_flight = s.in_flight;
        *s = MockStats {
            in_flight,
            ..MockStats::default()
        };
    });
    if let Ok(mut recorded) = state.recorded.lock() {
        recorded.clear();
    }
    StatusCode::NO_CONTENT
}

/// `{"model", "input": "text" or ["text", …]}` answered with one embedding per input, in the
/// OpenAI shape.
async fn embeddings(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    state.with_stats(|s| s.embeddings += 1);
    if let Some(status) = state.config().embeddings_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "fault injected (mock)", None);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON", None);
    };
    let inputs: Vec<&str> = match &request["input"] {
        Value::String(text) => vec![text.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if inputs.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "`input` must be a string or a list of strings",
            None,
        );
    }
    let tokens: usize = inputs
        .iter()
        .map(|text| chatq_common::chat::estimate_tokens(text))
        .sum();
    let data: Vec<Value> = (0..)
        .zip(&inputs)
        .map(|(index, text): (u32, _)| {
            json!({"object": "embedding", "index": index, "embedding": embedding::embed(text)})
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": request["model"].as_str().unwrap_or("mock-embedding"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// Decrements `in_flight` when a request ends, however it ends (including a client hanging up
/// mid-stream, which drops the body stream holding this guard).
struct InFlight(Arc<MockState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .with_stats(|s| s.in_flight = s.in_flight.saturating_sub(1));
    }
}

fn error(status: StatusCode, message: &str, retry_after: Option<u64>) -> Response {
    let kind = if status == StatusCode::TOO_MANY_REQUESTS {
        "rate_limit_error"
    } else if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let mut response = (
        status,
        Json(json!({"error": {"message": message, "type": kind, "code": null, "param": null}})),
    )
        .into_response();
    if let Some(secs) = retry_after
        && let Ok(value) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn chat_completions(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    let arrival = Instant::now();
    let config = state.config();
    let in_flight = {
        let mut now_in_flight = 0;
        state.with_stats(|s| {
            s.requests += 1;
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            now_in_flight = s.in_flight;
            if s.arrivals_ms.len() >= MAX_ARRIVALS {
                s.arrivals_ms.remove(0);
            }
            s.arrivals_ms.push(
                u64::try_from(arrival.duration_since(state.started).as_millis())
                    .unwrap_or(u64::MAX),
            );
        });
        now_in_flight
    };
    let guard = InFlight(state.clone());

    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        state.with_stats(|s| s.failed += 1);
        return error(StatusCode::BAD_REQUEST, "the body is not JSON", None);
    };
    let Some(messages) = parse_messages(&request) else {
        state.with_stats(|s| s.failed += 1);
        return error(
            StatusCode::BAD_REQUEST,
            "`messages` must be a list of messages",
            None,
        );
    };
    let stream = request["stream"].as_bool().unwrap_or(false);
    let include_usage = request["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let model = request["model"].as_str().unwrap_or("mock-model").to_owned();
    let max_tokens = request["max_tokens"]
        .as_u64()
        .or_else(|| request["max_completion_tokens"].as_u64());
    record(&state, &request, &messages, stream, max_tokens);

    if limited_by_rate(&state, &config, arrival)
        || config
            .max_concurrency
            .is_some_and(|max| in_flight > u64::from(max))
        || (config.rate_limit_rate > 0.0
            && rand::rng().random_bool(config.rate_limit_rate.min(1.0)))
    {
        state.with_stats(|s| s.rate_limited += 1);
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit reached (mock)",
            config.retry_after_secs,
        );
    }
    if config.failure_rate > 0.0 && rand::rng().random_bool(config.failure_rate.min(1.0)) {
        state.with_stats(|s| s.failed += 1);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated failure (mock)",
            config.retry_after_secs,
        );
    }
    match &config.fault {
        Some(Fault::Hang) => {
            state.with_stats(|s| s.failed += 1);
            state.stop.cancelled().await;
            return error(StatusCode::SERVICE_UNAVAILABLE, "mock stopped", None);
        }
        Some(Fault::Garbage) => {
            state.with_stats(|s| s.failed += 1);
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "<html>oops</html>",
            )
                .into_response();
        }
        Some(Fault::Status { status }) => {
            state.with_stats(|s| s.failed += 1);
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, "fault injected (mock)", config.retry_after_secs);
        }
        _ => {}
    }

    let wanted = max_tokens.map_or(u32::MAX, |m| u32::try_from(m).unwrap_or(u32::MAX));
    let count = config.tokens.min(wanted);
    let finish_reason = if wanted < config.tokens {
        "length"
    } else {
        "stop"
    };
    let mut plan = answer::plan(
        &request,
        &messages,
        count as usize,
        finish_reason,
        config.reply.as_deref(),
    );
    if let Some(Fault::Oversized { bytes }) = config.fault {
        plan.choices[0].pieces = vec![Piece::Text("x".repeat(bytes))];
    }
    let completion_tokens =
        u32::try_from(plan.choices.iter().map(|c| c.pieces.len()).sum::<usize>())
            .unwrap_or(u32::MAX);
    let reasoning_tokens = plan
        .choices
        .iter()
        .flat_map(|c| &c.pieces)
        .filter(|p| matches!(p, Piece::Reasoning(_)))
        .count();
    let prompt = prompt_tokens(&messages);
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    });
    let arrived_ms =
        u64::try_from(arrival.duration_since(state.started).as_millis()).unwrap_or(u64::MAX);
    state.with_stats(|s| {
        if s.tokens_ms.len() >= MAX_ARRIVALS {
            s.tokens_ms.remove(0);
        }
        s.tokens_ms.push((arrived_ms, prompt + completion_tokens));
    });
    let id = format!("chatcmpl-mock{}", rand::rng().random::<u32>());
    let created = time::OffsetDateTime::now_utc().unix_timestamp();

    if !stream {
        let longest = plan
            .choices
            .iter()
            .map(|c| c.pieces.len())
            .max()
            .unwrap_or(0);
        let delay = config.ttft_ms
            + config.token_delay_ms * u64::try_from(longest.saturating_sub(1)).unwrap_or(0);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        state.with_stats(|s| s.succeeded += 1);
        drop(guard);
        let choices: Vec<Value> = (0..)
            .zip(&plan.choices)
            .map(|(index, choice)| whole_choice(index, choice, plan.logprobs))
            .collect();
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage,
        }))
        .into_response();
    }

    let chunk = move |index: u32, delta: Value, logprobs: Value, finish: Option<&str>| {
        let data = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {data}\n\n"))
    };
    let fault = config.fault.clone();
    let (ttft, delay) = (config.ttft_ms, config.token_delay_ms);
    let usage_line = Bytes::from(format!(
        "data: {}\n\n",
        json!({"id": "usage", "object": "chat.completion.chunk", "choices": [], "usage": usage})
    ));
    let body = async_stream(move |tx| async move {
        let _guard = guard;
        if ttft > 0 {
            tokio::time::sleep(Duration::from_millis(ttft)).await;
        }
        for index in 0..u32::try_from(plan.choices.len()).unwrap_or(1) {
            let role = chunk(
                index,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                None,
            );
            if tx.send(role).await.is_err() {
                return;
            }
        }
        let mut sent: u32 = 0;
        for (index, choice) in (0..).zip(&plan.choices) {
            for (position, piece) in choice.pieces.iter().enumerate() {
                match &fault {
                    Some(Fault::StallAfter { after_tokens }) if sent == *after_tokens => {
                        state.with_stats(|s| s.failed += 1);
                        // Keep the connection open until the client gives up or the mock stops.
                        tokio::select! {
                            () = tx.closed() => {}
                            () = state.stop.cancelled() => {}
                        }
                        return;
                    }
                    Some(Fault::TruncateAfter { after_tokens }) if sent == *after_tokens => {
                        state.with_stats(|s| s.failed += 1);
                        return;
                    }
                    Some(Fault::MalformedAfter { after_tokens }) if sent == *after_tokens => {
                        state.with_stats(|s| s.failed += 1);
                        drop(
                            tx.send(Bytes::from_static(b"data: {\"choices\": [{\"delta\": \n\n"))
                                .await,
                        );
                        return;
                    }
                    _ => {}
                }
                if sent > 0 && delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                sent += 1;
                let (delta, logprobs) = piece_delta(piece, position, plan.logprobs);
                if tx.send(chunk(index, delta, logprobs, None)).await.is_err() {
                    return;
                }
            }
            let finish = chunk(index, json!({}), Value::Null, Some(&choice.finish_reason));
            if tx.send(finish).await.is_err() {
                return;
            }
        }
        if include_usage && tx.send(usage_line).await.is_err() {
            return;
        }
        if tx
            .send(Bytes::from_static(b"data: [DONE]\n\n"))
            .await
            .is_ok()
        {
            state.with_stats(|s| s.succeeded += 1);
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A response body fed by a task through a small channel; the task stops when the client hangs up.
fn async_stream<F, Fut>(produce: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let producer = produce(tx);
    // The producer runs inside the body stream itself, so it lives exactly as long as the
    // response: when hyper drops the body (the client is gone), the producer is dropped too.
    let driven = futures::stream::once(producer)
        .filter_map(|()| async { None::<Result<Bytes, Infallible>> });
    let received = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Body::from_stream(futures::stream::select(driven, received))
}

fn limited_by_rate(state: &MockState, config: &MockConfig, now: Instant) -> bool {
    let Some(max) = config.max_requests_per_sec else {
        return false;
    };
    let Ok(mut recent) = state.recent.lock() else {
        return false;
    };
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        recent.pop_front();
    }
    if recent.len() >= max as usize {
        return true;
    }
    recent.push_back(now);
    false
}

/// The request's messages as text. Any role is read: tool results and other roles count as
/// user text, developer messages as system ones, content parts by their text.
fn parse_messages(request: &Value) -> Option<Vec<ChatMessage>> {
    let body = request.as_object()?;
    body.get("messages")?.as_array()?;
    Some(chatq_common::chat::text_messages(body))
}

fn record(
    state: &MockState,
    request: &Value,
    messages: &[ChatMessage],
    stream: bool,
    max_tokens: Option<u64>,
) {
    let recorded = RecordedRequest {
        body: request.clone(),
        model: request["model"].as_str().map(str::to_owned),
        messages: messages
            .iter()
            .map(|m| RecordedMessage {
                role: m.role.as_str().to_owned(),
                content: m.content.clone(),
            })
            .collect(),
        stream,
        max_tokens,
        temperature: request["temperature"].as_f64(),
    };
    if let Ok(mut log) = state.recorded.lock() {
        if log.len() >= MAX_RECORDED {
            log.pop_front();
        }
        log.push_back(recorded);
    }
}
