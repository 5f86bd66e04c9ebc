//! Any OpenAI-compatible `/chat/completions` endpoint: OpenAI, vLLM, Ollama, llama.cpp server,
//! LiteLLM, chatq's own `mock-llm`; and its `/embeddings`, for the semantic reply cache.
//!
//! One pooled `reqwest::Client` serves every job of the process. It has a connect timeout, a read
//! timeout (how long the provider may stay silent, before its first byte or between chunks) and a
//! total timeout; and every body read is capped, because an upstream's reply is untrusted input.

use std::time::Duration;

use async_trait::async_trait;

use chatq_common::choices::{Choice, ChoiceDelta};
use chatq_common::settings::ProviderSettings;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::retry_after::retry_after;

use super::{
    EmbeddingRequest, Provider, ProviderConfigError, ProviderError, ProviderRequest, ReplyStream,
    StreamItem,
};

mod stream;
mod wire;

use self::stream::decode_stream;
use self::wire::{WireError, WireResponse, WireUsage, request_body};

/// Most bytes of an error body kept for the job's error message.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// An OpenAI-compatible provider.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    /// `{base}/chat/completions`.
    completions_url: String,
    /// `{base}/embeddings`.
    embeddings_url: String,
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
            return Err(ProviderConfigError::InvalidBaseUrl(
                chatq_common::settings::redact_url(&base_url),
            ));
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
            embeddings_url: format!("{base_url}/embeddings"),
            base_url,
            api_key: settings.api_key.clone(),
            max_response_bytes: settings.max_response_bytes,
        })
    }

    async fn send(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut request = self.client.post(url).json(body);
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
        format!(
            "OpenAI-compatible provider at {}",
            chatq_common::settings::redact_url(&self.base_url)
        )
    }

    async fn complete_stream(
        &self,
        request: &ProviderRequest,
    ) -> Result<ReplyStream, ProviderError> {
        let response = self
            .send(&self.completions_url, &request_body(request))
            .await?;
        if answers_json(&response) {
            // Not an event stream: a server that ignores `stream: true` sends the whole
            // completion, anything else is not a reply (and says so, rather than "cut short").
            let body = read_capped(response, self.max_response_bytes).await?;
            let items = parse_completion(&body, &request.params.model)?;
            return Ok(futures::stream::iter(items.into_iter().map(Ok)).boxed());
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

    async fn embed(&self, request: &EmbeddingRequest<'_>) -> Result<Vec<f32>, ProviderError> {
        let body = serde_json::json!({"model": request.model, "input": request.input});
        let response = self.send(&self.embeddings_url, &body).await?;
        let body = read_capped(response, self.max_response_bytes).await?;
        parse_embedding(&body)
    }
}

/// The one embedding of an OpenAI-shaped `/embeddings` answer.
fn parse_embedding(body: &[u8]) -> Result<Vec<f32>, ProviderError> {
    #[derive(Deserialize)]
    struct Embeddings {
        data: Vec<Embedding>,
    }
    #[derive(Deserialize)]
    struct Embedding {
        embedding: Vec<f32>,
    }
    let parsed: Embeddings = serde_json::from_slice(body)
        .map_err(|err| ProviderError::Malformed(format!("not an embeddings answer: {err}")))?;
    let embedding = parsed
        .data
        .into_iter()
        .next()
        .map(|e| e.embedding)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| ProviderError::Malformed("the answer holds no embedding".into()))?;
    if embedding.iter().any(|x| !x.is_finite()) {
        return Err(ProviderError::Malformed(
            "the embedding holds a number that is not finite".into(),
        ));
    }
    Ok(embedding)
}

/// Whether a response says it is JSON (not `text/event-stream`).
fn answers_json(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"))
}

/// A whole (non-streamed) chat completion, as the stream items that would have carried it: each
/// choice as one delta, then the end.
fn parse_completion(body: &[u8], requested_model: &str) -> Result<Vec<StreamItem>, ProviderError> {
    let parsed: WireResponse = serde_json::from_slice(body)
        .map_err(|err| ProviderError::Malformed(format!("not a chat completion: {err}")))?;
    if parsed.choices.is_empty() {
        return Err(ProviderError::Malformed("the reply has no choices".into()));
    }
    let mut items = Vec::new();
    let mut finish_reasons = Vec::new();
    for (position, choice) in (0..).zip(parsed.choices) {
        let index = choice.index.unwrap_or(position);
        let whole = Choice {
            index,
            message: choice.message,
            finish_reason: String::new(),
            logprobs: choice.logprobs.filter(|l| !l.is_null()),
        };
        let delta: ChoiceDelta = whole.as_delta();
        if !delta.is_empty() {
            items.push(StreamItem::Delta(delta));
        }
        if let Some(reason) = choice.finish_reason {
            finish_reasons.push((index, reason));
        }
    }
    items.push(StreamItem::Done {
        finish_reasons,
        usage: parsed.usage.map(WireUsage::into_usage),
        model: parsed.model.unwrap_or_else(|| requested_model.to_owned()),
    });
    Ok(items)
}

fn transport_error(err: reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        ProviderError::Timeout(transport_detail(err))
    } else if err.is_body() || err.is_decode() {
        ProviderError::Truncated
    } else {
        ProviderError::Connect(transport_detail(err))
    }
}

/// What went wrong on the wire, for the worker's log: the error and its causes, without the
/// request's URL (which holds the provider's address and any credentials in it).
fn transport_detail(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_is_described_without_its_credentials() {
        let settings = ProviderSettings {
            base_url: Some("https://proxy:hunter2@llm.example/v1?api_key=sk-secret".into()),
            ..chatq_common::Settings::default().provider
        };
        let described = OpenAiProvider::new(&settings, 1).unwrap().describe();
        assert!(
            described.contains("llm.example")
                && !described.contains("hunter2")
                && !described.contains("sk-secret"),
            "{described}"
        );
    }

    #[test]
    fn an_embeddings_answer_gives_its_first_vector_or_a_malformed_error() {
        let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-0.25]}],"model":"e"}"#;
        assert_eq!(parse_embedding(body).unwrap(), vec![0.5, -0.25]);
        for bad in [
            &br#"{"data":[]}"#[..],
            br#"{"data":[{"embedding":[]}]}"#,
            br#"{"error":{"message":"no"}}"#,
            b"<html>",
        ] {
            assert!(
                matches!(parse_embedding(bad), Err(ProviderError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
