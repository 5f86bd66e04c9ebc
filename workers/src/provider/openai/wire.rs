//! The OpenAI chat completions wire format, as chatq sends it to a provider and reads it back.

use chatq_common::chat::{ChatMessage, GenerationParams, Usage};
use serde::{Deserialize, Serialize};

use crate::provider::ProviderRequest;

#[derive(Serialize)]
pub(super) struct WireRequest<'a> {
    pub(super) model: &'a str,
    pub(super) messages: &'a [ChatMessage],
    pub(super) stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub(super) params: SamplingParams<'a>,
}

#[derive(Serialize)]
pub(super) struct StreamOptions {
    pub(super) include_usage: bool,
}

/// The sampling fields of [`GenerationParams`], without the model (sent at the top level).
#[derive(Serialize)]
pub(super) struct SamplingParams<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub(super) stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<&'a str>,
}

impl<'a> WireRequest<'a> {
    pub(super) fn new(request: &'a ProviderRequest, stream: bool) -> Self {
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
pub(super) struct WireResponse {
    pub(super) model: Option<String>,
    #[serde(default)]
    pub(super) choices: Vec<WireChoice>,
    pub(super) usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub(super) struct WireChoice {
    pub(super) message: WireMessage,
    pub(super) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireMessage {
    pub(super) content: Option<String>,
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
    pub(super) delta: Option<WireDelta>,
    pub(super) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireDelta {
    pub(super) content: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub(super) prompt_tokens: u32,
    #[serde(default)]
    pub(super) completion_tokens: u32,
}

impl WireUsage {
    pub(super) fn into_usage(self) -> Usage {
        Usage::new(self.prompt_tokens, self.completion_tokens)
    }
}

#[derive(Deserialize)]
pub(super) struct WireError {
    #[serde(default)]
    pub(super) message: String,
}
