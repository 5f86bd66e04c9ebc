//! The LLM behind a trait: one module per provider.
//!
//! A provider turns a prompt into a streamed answer ([`Provider::complete_stream`]): pieces of its
//! choices as they arrive, then how each ended. It also turns a text into an embedding
//! ([`Provider::embed`]), for the semantic tier of the reply cache. Workers always stream, so clients see tokens as
//! they arrive. Errors are typed so the worker can decide from the variant alone whether another
//! attempt could succeed ([`ProviderError::is_retryable`]) and how long to wait first.

pub mod openai;
pub mod simulated;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatq_common::chat::{ChatMessage, GenerationParams, Usage};
use chatq_common::choices::ChoiceDelta;
use chatq_common::job::Lane;
use chatq_common::settings::{ProviderKind, ProviderSettings, SimulatedSettings};
use futures::stream::BoxStream;
use serde_json::{Map, Value};

/// What a provider is asked.
#[derive(Debug, Clone)]
pub struct ProviderRequest {
    /// The prompt as text: what a conversation turn sends, and what estimates read.
    pub messages: Vec<ChatMessage>,
    pub params: GenerationParams,
    /// A chat completion's request as its client sent it (model resolved): sent instead of
    /// `messages` and `params`, so every parameter reaches the provider as given.
    pub body: Option<Map<String, Value>>,
    /// The job's lane: interactive calls take their turns at the provider limit first.
    pub lane: Lane,
}

/// What the semantic reply cache asks a provider to embed.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingRequest<'a> {
    /// The embedding model (`cache_semantic_model`).
    pub model: &'a str,
    pub input: &'a str,
    /// The lane of the job it is for: its turn at the provider limit is the job's.
    pub lane: Lane,
}

/// One item of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// More of one choice.
    Delta(ChoiceDelta),
    /// The end of the reply. A stream that ends without this was cut short.
    Done {
        /// How each choice ended, by index, as far as the provider said.
        finish_reasons: Vec<(u32, String)>,
        usage: Option<Usage>,
        model: String,
    },
}

/// A streamed reply.
pub type ReplyStream = BoxStream<'static, Result<StreamItem, ProviderError>>;

/// Why a provider call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider is rate limiting requests (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the provider failed with HTTP {status}: {message}")]
    Server {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the provider rejected the request with HTTP {status}: {message}")]
    Rejected { status: u16, message: String },
    #[error("the provider did not answer in time ({0})")]
    Timeout(String),
    #[error("cannot reach the provider: {0}")]
    Connect(String),
    #[error("the provider sent a malformed reply: {0}")]
    Malformed(String),
    #[error("the provider's reply ended before it was complete")]
    Truncated,
    #[error("the provider's reply is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
}

impl ProviderError {
    /// Whether another attempt could succeed: rate limits, server errors, timeouts, broken
    /// connections and garbled replies could be passing; a rejected or oversized request would be
    /// rejected again.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ProviderError::Rejected { .. } | ProviderError::TooLarge { .. }
        )
    }

    /// Every [`ProviderError::kind`], for registering the metric's series at zero.
    pub const KINDS: [&str; 8] = [
        "rate_limited",
        "server_error",
        "rejected",
        "timeout",
        "connect",
        "malformed",
        "truncated",
        "too_large",
    ];

    /// The error's kind, as the `outcome` label of `chatq_provider_calls_total` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Server { .. } => "server_error",
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Connect(_) => "connect",
            ProviderError::Malformed(_) => "malformed",
            ProviderError::Truncated => "truncated",
            ProviderError::TooLarge { .. } => "too_large",
        }
    }

    /// How long the provider asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after }
            | ProviderError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The `error.type` recorded on a job that fails with this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "provider_rate_limited",
            ProviderError::Server { .. } => "provider_error",
            ProviderError::Rejected { .. } => "provider_rejected",
            ProviderError::Timeout(_) => "provider_timeout",
            ProviderError::Connect(_) => "provider_unreachable",
            ProviderError::Malformed(_) | ProviderError::Truncated => "provider_malformed_reply",
            ProviderError::TooLarge { .. } => "provider_reply_too_large",
        }
    }
}

/// An LLM provider.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// A short name for logs and the start-up banner.
    fn describe(&self) -> String;

    /// Asks for a streamed reply. The call returns once the provider has accepted the request;
    /// the stream then yields deltas and ends with [`StreamItem::Done`].
    ///
    /// # Errors
    /// See [`ProviderError`]; errors after the start arrive through the stream.
    async fn complete_stream(
        &self,
        request: &ProviderRequest,
    ) -> Result<ReplyStream, ProviderError>;

    /// The embedding of one text.
    ///
    /// # Errors
    /// See [`ProviderError`].
    async fn embed(&self, request: &EmbeddingRequest<'_>) -> Result<Vec<f32>, ProviderError>;
}

/// Why no provider could be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum ProviderConfigError {
    #[error(
        "CHATQ_PROVIDER=openai needs CHATQ_PROVIDER_BASE_URL (for example https://api.openai.com/v1 \
         or http://127.0.0.1:11434/v1 for Ollama)"
    )]
    MissingBaseUrl,
    #[error("CHATQ_PROVIDER_BASE_URL {0:?} is not an http(s) URL")]
    InvalidBaseUrl(String),
    #[error("cannot build the HTTP client for the provider: {0}")]
    Client(String),
}

/// Builds the provider the settings name.
///
/// # Errors
/// The OpenAI-compatible provider is chosen without a usable base URL.
pub fn from_settings(
    provider: &ProviderSettings,
    simulated: &SimulatedSettings,
    worker_concurrency: usize,
) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    Ok(match provider.kind {
        ProviderKind::OpenAi => {
            Arc::new(openai::OpenAiProvider::new(provider, worker_concurrency)?)
        }
        ProviderKind::Simulated => Arc::new(simulated::SimulatedProvider::from_settings(simulated)),
    })
}
