//! The chat completions request chatq accepts, validated into a job.
//!
//! Parameters chatq does not support (tools, logprobs, n > 1, …) are refused with a 400 that names
//! them, rather than silently ignored: a client relying on them would otherwise get a reply that
//! looks right and is not.

use chatq_common::chat::{ChatMessage, GenerationParams, Role};
use chatq_common::settings::LimitSettings;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::validate::{SamplingFields, Stop, check_len};

/// Parameters accepted and ignored: they change nothing about the reply.
const IGNORED: &[&str] = &["store", "metadata", "service_tier", "parallel_tool_calls"];

/// `POST /v1/chat/completions`, as sent. (Serialize: an `Idempotency-Key` stands for this body.)
#[derive(Debug, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<Value>>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub user: Option<String>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub response_format: Option<Value>,
    /// Everything else, refused unless listed in [`IGNORED`].
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A validated request.
#[derive(Debug)]
pub struct CompletionJob {
    pub params: GenerationParams,
    pub messages: Vec<ChatMessage>,
    pub stream: bool,
    pub include_usage: bool,
}

fn unsupported(param: &str, message: String) -> ApiError {
    ApiError::invalid_with_code(message, param, "unsupported_parameter")
}

impl ChatCompletionRequest {
    /// # Errors
    /// A missing or invalid field, or a parameter chatq does not support.
    pub fn validate(self, limits: &LimitSettings) -> Result<CompletionJob, ApiError> {
        if let Some(param) = self
            .other
            .keys()
            .find(|key| !IGNORED.contains(&key.as_str()))
        {
            return Err(unsupported(
                param,
                format!("Unsupported parameter: '{param}' is not supported by chatq."),
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(unsupported("n", "Unsupported value: 'n' must be 1.".into()));
        }
        if self.logprobs == Some(true) {
            return Err(unsupported(
                "logprobs",
                "Unsupported value: 'logprobs' must be false.".into(),
            ));
        }
        if let Some(format) = &self.response_format
            && format.get("type").and_then(Value::as_str) != Some("text")
        {
            return Err(unsupported(
                "response_format",
                "Unsupported value: only 'response_format' {\"type\": \"text\"} is supported."
                    .into(),
            ));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(
                "Invalid 'stream_options': only allowed when 'stream' is true.",
                "stream_options",
            ));
        }
        let Some(model) = self.model.filter(|m| !m.trim().is_empty()) else {
            return Err(ApiError::invalid_with_code(
                "Missing required parameter: 'model'.",
                "model",
                "missing_required_parameter",
            ));
        };
        let Some(raw_messages) = self.messages else {
            return Err(ApiError::invalid_with_code(
                "Missing required parameter: 'messages'.",
                "messages",
                "missing_required_parameter",
            ));
        };
        if raw_messages.is_empty() {
            return Err(ApiError::invalid_with_code(
                "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                "messages",
                "empty_array",
            ));
        }
        let messages = raw_messages
            .iter()
            .enumerate()
            .map(|(i, message)| parse_message(i, message, limits))
            .collect::<Result<Vec<_>, _>>()?;
        let sampling = SamplingFields {
            model: Some(model),
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop: self.stop,
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            user: self.user,
        };
        let params = sampling.into_params(limits).map_err(|err| match err {
            // The token limit may have come in as max_completion_tokens; say so.
            ApiError::InvalidRequest {
                message,
                param: Some(param),
                code,
            } if param == "max_tokens" && self.max_completion_tokens.is_some() => {
                ApiError::InvalidRequest {
                    message: message.replace("'max_tokens'", "'max_completion_tokens'"),
                    param: Some("max_completion_tokens".into()),
                    code,
                }
            }
            other => other,
        })?;
        Ok(CompletionJob {
            params,
            messages,
            stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

/// One input message: `{role, content}` with text content (a string, or text parts).
fn parse_message(
    index: usize,
    message: &Value,
    limits: &LimitSettings,
) -> Result<ChatMessage, ApiError> {
    let param = |field: &str| format!("messages[{index}].{field}");
    let Some(object) = message.as_object() else {
        return Err(ApiError::invalid(
            format!("Invalid 'messages[{index}]': expected an object."),
            format!("messages[{index}]"),
        ));
    };
    for key in object.keys() {
        if !matches!(key.as_str(), "role" | "content" | "name") {
            return Err(unsupported(
                &param(key),
                format!(
                    "Unsupported parameter: '{}' is not supported by chatq.",
                    param(key)
                ),
            ));
        }
    }
    let role = match object.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some(other) => {
            return Err(unsupported(
                &param("role"),
                format!(
                    "Unsupported value: '{}' role '{other}' is not supported by chatq (use system, developer, user or assistant).",
                    param("role")
                ),
            ));
        }
        None => {
            return Err(ApiError::invalid_with_code(
                format!("Missing required parameter: '{}'.", param("role")),
                param("role"),
                "missing_required_parameter",
            ));
        }
    };
    let content = match object.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(unsupported(
                            &format!("messages[{index}].content[{j}]"),
                            format!(
                                "Unsupported content: 'messages[{index}].content[{j}]' must be a text part; chatq supports text only."
                            ),
                        ));
                    }
                }
            }
            text
        }
        _ => {
            return Err(ApiError::invalid(
                format!(
                    "Invalid '{}': expected a string or an array of text parts.",
                    param("content")
                ),
                param("content"),
            ));
        }
    };
    check_len(&param("content"), &content, limits.max_message_chars)?;
    Ok(ChatMessage::new(role, content))
}
