//! Any OpenAI-compatible `/chat/completions` endpoint: OpenAI, vLLM, Ollama, llama.cpp server,
//! LiteLLM, chatq's own `mock-llm`.
//!
//! One pooled `reqwest::Client` serves every job of the process. It has a connect timeout, a read
//! timeout (how long the provider may stay silent, before its first byte or between chunks) and a
//! total timeout; and every body read is capped, because an upstream's reply is untrusted input.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatq_common::chat::{ChatMessage, GenerationParams, Usage};
use chatq_common::settings::ProviderSettings;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::sse::SseDecoder;
use super::{
    Provider, ProviderConfigError, ProviderError, ProviderReply, ProviderRequest, ReplyStream,
    StreamItem,
};

/// Most bytes of an error body kept for the job's error message.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// An OpenAI-compatible provider.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    /// `{base}/chat/completions`.
    completions_url: String,
    base_url: String,
    api_key: Option<SecretString>,
    max_response_bytes: usize,
}

impl OpenAiProvider {
    /// # Errors
    /// No base URL, or one that is not http(s).
    pub fn new(
        settings: &ProviderSettings,
        worker_concurrency: usize,
    ) -> Result<Self, ProviderConfigError> {
        let base_url = settings
            .base_url
            .as_deref()
            .ok_or(ProviderConfigError::MissingBaseUrl)?
            .trim_end_matches('/')
            .to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ProviderConfigError::InvalidBaseUrl(base_url));
        }
        // reqwest is built without a default TLS crypto backend; use ring (already in the tree
        // for NATS and Postgres TLS). Installing twice is harmless.
        drop(rustls::crypto::ring::default_provider().install_default());
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs))
            .read_timeout(Duration::from_secs(settings.idle_timeout_secs))
            .timeout(Duration::from_secs(settings.request_timeout_secs))
            .pool_max_idle_per_host(worker_concurrency.max(8))
            .tcp_nodelay(true)
            .user_agent(concat!("chatq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| ProviderConfigError::Client(err.to_string()))?;
        Ok(Self {
            client,
            completions_url: format!("{base_url}/chat/completions"),
            base_url,
            api_key: settings.api_key.clone(),
            max_response_bytes: settings.max_response_bytes,
        })
    }

    async fn send(&self, body: &WireRequest<'_>) -> Result<reqwest::Response, ProviderError> {
        let mut request = self.client.post(&self.completions_url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let message = error_message(response, self.max_response_bytes.min(MAX_ERROR_BODY)).await;
        let status = status.as_u16();
        Err(match status {
            429 => ProviderError::RateLimited { retry_after },
            408 | 409 | 500..=599 => ProviderError::Server {
                status,
                message,
                retry_after,
            },
            _ => ProviderError::Rejected { status, message },
        })
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn describe(&self) -> String {
        format!("OpenAI-compatible provider at {}", self.base_url)
    }

    async fn complete(&self, request: &ProviderRequest) -> Result<ProviderReply, ProviderError> {
        let response = self.send(&WireRequest::new(request, false)).await?;
        let body = read_capped(response, self.max_response_bytes).await?;
        parse_completion(&body, &request.params.model)
    }

    async fn complete_stream(
        &self,
        request: &ProviderRequest,
    ) -> Result<ReplyStream, ProviderError> {
        let response = self.send(&WireRequest::new(request, true)).await?;
        if answers_json(&response) {
            // Not an event stream: a server that ignores `stream: true` sends the whole
            // completion, anything else is not a reply (and says so, rather than "cut short").
            let body = read_capped(response, self.max_response_bytes).await?;
            let reply = parse_completion(&body, &request.params.model)?;
            let items = [
                Ok(StreamItem::Delta(reply.content)),
                Ok(StreamItem::Done {
                    finish_reason: reply.finish_reason,
                    usage: reply.usage,
                    model: reply.model,
                }),
            ];
            return Ok(futures::stream::iter(items).boxed());
        }
        let chunks = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(transport_error));
        Ok(decode_stream(
            chunks,
            self.max_response_bytes,
            request.params.model.clone(),
        )
        .boxed())
    }
}

/// Whether a response says it is JSON (not `text/event-stream`).
fn answers_json(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"))
}

/// A whole (non-streamed) chat completion.
fn parse_completion(body: &[u8], requested_model: &str) -> Result<ProviderReply, ProviderError> {
    let parsed: WireResponse = serde_json::from_slice(body)
        .map_err(|err| ProviderError::Malformed(format!("not a chat completion: {err}")))?;
    let choice = parsed
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ProviderError::Malformed("the reply has no choices".into()))?;
    Ok(ProviderReply {
        content: choice.message.content.unwrap_or_default(),
        finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".into()),
        usage: parsed.usage.map(WireUsage::into_usage),
        model: parsed.model.unwrap_or_else(|| requested_model.to_owned()),
    })
}

/// Turns the raw body of a streamed completion into [`StreamItem`]s.
fn decode_stream(
    chunks: impl Stream<Item = Result<Bytes, ProviderError>> + Send + Unpin + 'static,
    max_bytes: usize,
    requested_model: String,
) -> impl Stream<Item = Result<StreamItem, ProviderError>> + Send + 'static {
    struct State<S> {
        chunks: S,
        decoder: SseDecoder,
        read: usize,
        max_bytes: usize,
        pending: std::collections::VecDeque<StreamItem>,
        finish_reason: Option<String>,
        usage: Option<Usage>,
        model: String,
        finished: bool,
    }
    let state = State {
        chunks,
        decoder: SseDecoder::new(),
        read: 0,
        max_bytes,
        pending: Default::default(),
        finish_reason: None,
        usage: None,
        model: requested_model,
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.pending.pop_front() {
                return Some((Ok(item), state));
            }
            if state.finished {
                return None;
            }
            let Some(chunk) = state.chunks.next().await else {
                // The body ended. Lenient with servers that omit `[DONE]` after a finish reason.
                state.finished = true;
                return match state.finish_reason.take() {
                    Some(finish_reason) => Some((
                        Ok(StreamItem::Done {
                            finish_reason,
                            usage: state.usage,
                            model: state.model.clone(),
                        }),
                        state,
                    )),
                    None => Some((Err(ProviderError::Truncated), state)),
                };
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    state.finished = true;
                    return Some((Err(err), state));
                }
            };
            state.read += chunk.len();
            if state.read > state.max_bytes {
                state.finished = true;
                return Some((
                    Err(ProviderError::TooLarge {
                        limit: state.max_bytes,
                    }),
                    state,
                ));
            }
            let events = match state.decoder.feed(&chunk) {
                Ok(events) => events,
                Err(err) => {
                    state.finished = true;
                    return Some((Err(ProviderError::Malformed(err.to_string())), state));
                }
            };
            for data in events {
                if data.trim() == "[DONE]" {
                    state.finished = true;
                    state.pending.push_back(StreamItem::Done {
                        finish_reason: state.finish_reason.take().unwrap_or_else(|| "stop".into()),
                        usage: state.usage,
                        model: state.model.clone(),
                    });
                    break;
                }
                let parsed: WireChunk = match serde_json::from_str(&data) {
                    Ok(parsed) => parsed,
                    Err(err) => {
                        state.finished = true;
                        state.pending.clear();
                        return Some((
                            Err(ProviderError::Malformed(format!(
                                "a stream chunk is not JSON: {err}"
                            ))),
                            state,
                        ));
                    }
                };
                if let Some(error) = parsed.error {
                    state.finished = true;
                    state.pending.clear();
                    return Some((
                        Err(ProviderError::Server {
                            status: 500,
                            message: error.message,
                            retry_after: None,
                        }),
                        state,
                    ));
                }
                if let Some(model) = parsed.model {
                    state.model = model;
                }
                if let Some(usage) = parsed.usage {
                    state.usage = Some(usage.into_usage());
                }
                for choice in parsed.choices {
                    if let Some(text) = choice.delta.and_then(|delta| delta.content)
                        && !text.is_empty()
                    {
                        state.pending.push_back(StreamItem::Delta(text));
                    }
                    if let Some(reason) = choice.finish_reason {
                        state.finish_reason = Some(reason);
                    }
                }
            }
        }
    })
}

fn transport_error(err: reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        ProviderError::Timeout(err.to_string())
    } else if err.is_connect() {
        ProviderError::Connect(err.to_string())
    } else if err.is_body() || err.is_decode() {
        ProviderError::Truncated
    } else {
        ProviderError::Connect(err.to_string())
    }
}

/// `Retry-After` in seconds, or OpenAI's `retry-after-ms`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |value: &HeaderValue| value.to_str().ok()?.trim().parse::<f64>().ok();
    if let Some(ms) = headers.get("retry-after-ms").and_then(number) {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0)));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(number)
        .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 3600.0)))
}

/// The provider's own error message, from an OpenAI-shaped error body or the raw text.
async fn error_message(response: reqwest::Response, limit: usize) -> String {
    let status = response.status();
    let Ok(body) = read_capped(response, limit).await else {
        return status.to_string();
    };
    #[derive(Deserialize)]
    struct Envelope {
        error: WireError,
    }
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(&body) {
        return envelope.error.message;
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        text.chars().take(500).collect()
    }
}

/// Reads a whole body, failing once it passes `limit` bytes.
async fn read_capped(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(transport_error)?;
        if body.len() + chunk.len() > limit {
            return Err(ProviderError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    params: SamplingParams<'a>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The sampling fields of [`GenerationParams`], without the model (sent at the top level).
#[derive(Serialize)]
struct SamplingParams<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
}

impl<'a> WireRequest<'a> {
    fn new(request: &'a ProviderRequest, stream: bool) -> Self {
        let GenerationParams {
            model,
            temperature,
            top_p,
            max_tokens,
            stop,
            seed,
            presence_penalty,
            frequency_penalty,
            user,
        } = &request.params;
        Self {
            model,
            messages: &request.messages,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            params: SamplingParams {
                temperature: *temperature,
                top_p: *top_p,
                max_tokens: *max_tokens,
                stop,
                seed: *seed,
                presence_penalty: *presence_penalty,
                frequency_penalty: *frequency_penalty,
                user: user.as_deref(),
            },
        }
    }
}

#[derive(Deserialize)]
struct WireResponse {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireChunk {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    usage: Option<WireUsage>,
    /// Some servers report a failure mid-stream as a chunk with an `error` object.
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    delta: Option<WireDelta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl WireUsage {
    fn into_usage(self) -> Usage {
        Usage::new(self.prompt_tokens, self.completion_tokens)
    }
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decode(parts: &[&str]) -> Vec<Result<StreamItem, ProviderError>> {
        let chunks: Vec<Result<Bytes, ProviderError>> = parts
            .iter()
            .map(|part| Ok(Bytes::copy_from_slice(part.as_bytes())))
            .collect();
        decode_stream(futures::stream::iter(chunks), 1 << 20, "m".into())
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_complete_stream_yields_deltas_then_done_with_usage() {
        let items = decode(&[
            "data: {\"model\":\"gpt\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
        ])
        .await;
        let items: Vec<StreamItem> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            items,
            vec![
                StreamItem::Delta("Hel".into()),
                StreamItem::Delta("lo".into()),
                StreamItem::Done {
                    finish_reason: "stop".into(),
                    usage: Some(Usage::new(3, 2)),
                    model: "gpt".into()
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_truncated() {
        let items = decode(&["data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"]).await;
        assert!(matches!(items.last(), Some(Err(ProviderError::Truncated))));
    }

    #[tokio::test]
    async fn garbage_is_malformed_and_nothing_after_it_is_yielded() {
        let items = decode(&[
            "data: {not json\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
        ])
        .await;
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0], Err(ProviderError::Malformed(_))));
    }

    #[tokio::test]
    async fn an_oversized_stream_stops_at_the_limit() {
        let big = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(100)
        );
        let chunks: Vec<Result<Bytes, ProviderError>> =
            (0..10).map(|_| Ok(Bytes::from(big.clone()))).collect();
        let items: Vec<_> = decode_stream(futures::stream::iter(chunks), 500, "m".into())
            .collect()
            .await;
        assert!(matches!(
            items.last(),
            Some(Err(ProviderError::TooLarge { limit: 500 }))
        ));
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
    }
}
