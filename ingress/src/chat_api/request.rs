//! The chat completions request chatq accepts, validated into a job.
//!
//! chatq checks what it must (the model, the shape of every message, tools and response format,
//! limits on choices, media and schemas) and then passes the request on to the provider as the
//! client sent it, so every parameter of the API reaches the model: nothing is rebuilt, nothing
//! silently dropped. A parameter chatq does not know is refused with a 400 that names it, or
//! forwarded as given, as the `unknown_parameters` setting says.

use chatq_common::chat::GenerationParams;
use chatq_common::settings::{LimitSettings, UnknownParameters};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{messages, tools};
use crate::error::ApiError;
use crate::validate::{SamplingFields, Stop};

/// Parameters of the OpenAI API that chatq passes on to the provider unread (those it reads are
/// fields of [`ChatCompletionRequest`]).
const FORWARDED: &[&str] = &[
    "logit_bias",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "verbosity",
    "web_search_options",
    "prompt_cache_key",
    "safety_identifier",
    "functions",
    "function_call",
];

/// Parameters that concern the client and chatq only, never sent on: how the answer is delivered,
/// and OpenAI's stored completions (chatq keeps every job itself).
const NOT_FORWARDED: &[&str] = &["stream", "stream_options", "store", "metadata", "cache"];

/// `POST /v1/chat/completions`: the fields chatq reads. (Serialize: an `Idempotency-Key`
/// stands for this body.)
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<Value>>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    pub user: Option<String>,
    #[schema(minimum = 1)]
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub response_format: Option<Value>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub reasoning_effort: Option<String>,
    pub store: Option<bool>,
    /// Up to 16 string values, keys up to 64 characters, values up to 512.
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub metadata: Option<Map<String, Value>>,
    /// chatq's own: `false` keeps this request out of the reply cache (also said by
    /// `Cache-Control: no-cache`).
    pub cache: Option<bool>,
    /// Everything else: checked against the lists above and the `unknown_parameters` setting.
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    /// Accepted for compatibility; chunks are never obfuscated (chatq's stream is not padded).
    #[serde(default)]
    pub include_obfuscation: Option<bool>,
}

/// A validated request.
#[derive(Debug)]
pub struct CompletionJob {
    pub params: GenerationParams,
    /// The body the provider is sent (the model resolved when the job is recorded).
    pub body: Map<String, Value>,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices asked for.
    pub choices: u32,
}

pub(super) fn unsupported(param: &str, message: String) -> ApiError {
    ApiError::invalid_with_code(message, param, "unsupported_parameter")
}

/// `Invalid '<param>': <what>.`, code `invalid_value`.
pub(super) fn invalid(param: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_with_code(
        format!("Invalid '{param}': {what}."),
        param,
        "invalid_value",
    )
}

impl ChatCompletionRequest {
    /// Checks the request and makes the body the provider is sent from `sent`, the body as the
    /// client sent it.
    ///
    /// # Errors
    /// A missing or invalid field, one over its limit, or an unknown parameter while they are
    /// refused.
    pub fn validate(
        self,
        mut sent: Map<String, Value>,
        limits: &LimitSettings,
        unknown: UnknownParameters,
    ) -> Result<CompletionJob, ApiError> {
        if unknown == UnknownParameters::Refuse
            && let Some(param) = self
                .other
                .keys()
                .find(|key| !FORWARDED.contains(&key.as_str()))
        {
            return Err(unsupported(
                param,
                format!(
                    "Unrecognized request argument supplied: '{param}'. (chatq refuses parameters \
                     it does not know; its operator can forward them with \
                     CHATQ_UNKNOWN_PARAMETERS=forward.)"
                ),
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
        let Some(raw_messages) = &self.messages else {
            return Err(ApiError::invalid_with_code(
                "Missing required parameter: 'messages'.",
                "messages",
                "missing_required_parameter",
            ));
        };
        messages::check(raw_messages, limits)?;
        let tool_names = tools::check_tools(self.tools.as_deref(), limits)?;
        tools::check_tool_choice(self.tool_choice.as_ref(), &tool_names)?;
        if let Some(format) = &self.response_format {
            tools::check_response_format(format, limits)?;
        }
        let choices = self.n.unwrap_or(1);
        if choices == 0 || choices > limits.max_choices {
            return Err(invalid(
                "n",
                format!(
                    "{choices} is not between 1 and {} (the most choices this server answers)",
                    limits.max_choices
                ),
            ));
        }
        if let Some(top) = self.top_logprobs {
            if top > 20 {
                return Err(invalid("top_logprobs", format!("{top} is above 20")));
            }
            if self.logprobs != Some(true) {
                return Err(ApiError::invalid(
                    "Invalid 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set.",
                    "top_logprobs",
                ));
            }
        }
        if let Some(effort) = &self.reasoning_effort
            && !matches!(
                effort.as_str(),
                "none" | "minimal" | "low" | "medium" | "high" | "xhigh"
            )
        {
            return Err(invalid(
                "reasoning_effort",
                format!(
                    "'{effort}' is not one of 'none', 'minimal', 'low', 'medium', 'high', 'xhigh'"
                ),
            ));
        }
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
        let mut params = sampling.into_params(limits).map_err(|err| match err {
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
        params.n = self.n;
        params.no_cache = self.cache == Some(false);
        for key in NOT_FORWARDED {
            sent.remove(*key);
        }
        Ok(CompletionJob {
            params,
            body: sent,
            stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            choices,
        })
    }
}
