//! The OpenAI chat completions wire format, as chatq sends it to a provider and reads it back.

use chatq_common::chat::{
    ChatMessage, CompletionTokensDetails, GenerationParams, PromptTokensDetails, Usage,
};
use chatq_common::choices::{AssistantMessage, ChoiceDelta, ToolCallDelta};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::provider::ProviderRequest;

/// The body of a streamed request: a chat completion's own body, or one built from a
/// conversation turn's prompt and parameters. Usage is always asked for, to settle the token
/// budget with what the provider counted.
pub(super) fn request_body(request: &ProviderRequest) -> Value {
    let mut body = match &request.body {
        Some(body) => body.clone(),
        None => match serde_json::to_value(TurnRequest::new(request)) {
            Ok(Value::Object(body)) => body,
            _ => Map::new(),
        },
    };
    body.insert("model".into(), Value::String(request.params.model.clone()));
    body.insert("stream".into(), Value::Bool(true));
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    Value::Object(body)
}

/// A conversation turn, as sent.
#[derive(Serialize)]
struct TurnRequest<'a> {
    messages: &'a [ChatMessage],
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

impl<'a> TurnRequest<'a> {
    fn new(request: &'a ProviderRequest) -> Self {
        let GenerationParams {
            model: _,
            temperature,
            top_p,
            max_tokens,
            stop,
            seed,
            presence_penalty,
            frequency_penalty,
            user,
            n: _,
            no_cache: _,
        } = &request.params;
        Self {
            messages: &request.messages,
            temperature: *temperature,
            top_p: *top_p,
            max_tokens: *max_tokens,
            stop,
            seed: *seed,
            presence_penalty: *presence_penalty,
            frequency_penalty: *frequency_penalty,
            user: user.as_deref(),
        }
    }
}

/// A whole (non-streamed) completion, from a server that ignored `stream: true`.
#[derive(Deserialize)]
pub(super) struct WireResponse {
    pub(super) model: Option<String>,
    #[serde(default)]
    pub(super) choices: Vec<WireChoice>,
    pub(super) usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub(super) struct WireChoice {
    pub(super) index: Option<u32>,
    pub(super) message: AssistantMessage,
    pub(super) finish_reason: Option<String>,
    pub(super) logprobs: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct WireChunk {
    pub(super) model: Option<String>,
    #[serde(default)]
    pub(super) choices: Vec<WireChunkChoice>,
    pub(super) usage: Option<WireUsage>,
    /// Some servers report a failure mid-stream as a chunk with an `error` object.
    pub(super) error: Option<WireError>,
}

#[derive(Deserialize)]
pub(super) struct WireChunkChoice {
    #[serde(default)]
    pub(super) index: u32,
    pub(super) delta: Option<WireDelta>,
    pub(super) finish_reason: Option<String>,
    pub(super) logprobs: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct WireDelta {
    pub(super) content: Option<String>,
    #[serde(default)]
    pub(super) tool_calls: Vec<ToolCallDelta>,
    pub(super) refusal: Option<String>,
    /// `reasoning_content` (DeepSeek, vLLM) or `reasoning` (OpenRouter, Ollama).
    #[serde(alias = "reasoning")]
    pub(super) reasoning_content: Option<String>,
}

impl WireChunkChoice {
    /// The piece of the answer this chunk carries, if any.
    pub(super) fn into_delta(self) -> Option<ChoiceDelta> {
        let delta = self.delta;
        let logprobs = self.logprobs.filter(|l| !l.is_null());
        let piece = match delta {
            Some(delta) => ChoiceDelta {
                index: self.index,
                text: delta.content.unwrap_or_default(),
                tool_calls: delta.tool_calls,
                refusal: delta.refusal.filter(|r| !r.is_empty()),
                reasoning_content: delta.reasoning_content.filter(|r| !r.is_empty()),
                logprobs,
            },
            None => ChoiceDelta {
                index: self.index,
                logprobs,
                ..ChoiceDelta::default()
            },
        };
        (!piece.is_empty()).then_some(piece)
    }
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub(super) prompt_tokens: u32,
    #[serde(default)]
    pub(super) completion_tokens: u32,
    pub(super) prompt_tokens_details: Option<PromptTokensDetails>,
    pub(super) completion_tokens_details: Option<CompletionTokensDetails>,
}

impl WireUsage {
    pub(super) fn into_usage(self) -> Usage {
        Usage {
            prompt_tokens_details: self.prompt_tokens_details,
            completion_tokens_details: self.completion_tokens_details,
            ..Usage::new(self.prompt_tokens, self.completion_tokens)
        }
    }
}

#[derive(Deserialize)]
pub(super) struct WireError {
    #[serde(default)]
    pub(super) message: String,
}
