//! `POST /v1/responses`: the request chatq accepts, checked and turned into the chat completion
//! a chat-completions provider answers.
//!
//! The input (a string, or message items with text parts) becomes chat messages after the
//! instructions (a system message) and, with `previous_response_id`, after the earlier
//! response's own messages and its reply: a conversation is continued by carrying its history
//! in each response's job, so it outlives the responses it came from. The earlier response's
//! instructions are not carried over, as in OpenAI's API.

use chatq_common::chat::GenerationParams;
use chatq_common::db::responses::Continued;
use chatq_common::ids::ResponseId;
use chatq_common::settings::LimitSettings;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::input::{chat_message, normalise_input};
use crate::error::ApiError;
use crate::validate::SamplingFields;

/// Parameters accepted and not acted on: they change nothing for a text reply without tools, or
/// concern OpenAI's own service.
const IGNORED: &[&str] = &[
    "parallel_tool_calls",
    "include",
    "stream_options",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];

/// `POST /v1/responses`: the fields chatq reads. Anything else is refused by name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateResponse {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<u32>,
    /// Up to 16 string values, keys up to 64 characters, values up to 512.
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub metadata: Option<Map<String, Value>>,
    pub store: Option<bool>,
    pub background: Option<bool>,
    pub stream: Option<bool>,
    pub previous_response_id: Option<String>,
    pub user: Option<String>,
    /// Accepted when it asks for plain text, the only output chatq makes here.
    pub text: Option<Value>,
    /// Accepted when empty: tools are not offered through this API yet.
    pub tools: Option<Vec<Value>>,
    /// Accepted as `auto` or `none` (no tools, so both mean the same).
    pub tool_choice: Option<Value>,
    /// Accepted as `disabled`: the history is sent whole, within the server's limits.
    pub truncation: Option<String>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: Map<String, Value>,
}

/// A checked request.
#[derive(Debug)]
pub struct Prepared {
    pub params: GenerationParams,
    /// The chat completion body the provider is sent.
    pub body: Map<String, Value>,
    /// The input items, normalised, with their ids.
    pub items: Vec<Value>,
    pub metadata: Value,
    pub store: bool,
    pub background: bool,
    pub stream: bool,
    pub previous: Option<ResponseId>,
    pub instructions: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_output_tokens: Option<i32>,
}

pub(super) fn invalid(param: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_with_code(
        format!("Invalid '{param}': {what}."),
        param,
        "invalid_value",
    )
}

pub(super) fn unsupported(param: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_with_code(
        format!("Unsupported '{param}': {what}."),
        param,
        "unsupported_parameter",
    )
}

impl CreateResponse {
    /// The earlier response this one continues, as given (checked, not yet looked up).
    ///
    /// # Errors
    /// A malformed id.
    pub fn previous(&self) -> Result<Option<ResponseId>, ApiError> {
        self.previous_response_id
            .as_deref()
            .map(|id| {
                id.parse::<ResponseId>()
                    .map_err(|err| invalid("previous_response_id", err))
            })
            .transpose()
    }

    /// Checks the request and builds the chat completion it stands for, with the history of
    /// `continued` (the response named by `previous_response_id`) first.
    ///
    /// # Errors
    /// A missing or invalid field, one over its limit, or a parameter chatq does not support.
    pub fn prepare(
        self,
        id: ResponseId,
        continued: Option<Continued>,
        limits: &LimitSettings,
    ) -> Result<Prepared, ApiError> {
        if let Some(param) = self
            .other
            .keys()
            .find(|key| !IGNORED.contains(&key.as_str()))
        {
            return Err(ApiError::invalid_with_code(
                format!("Unrecognized request argument supplied: '{param}'."),
                param.as_str(),
                "unsupported_parameter",
            ));
        }
        self.check_fixed_options()?;
        let previous = self.previous()?;
        let Some(model) = self.model.filter(|m| !m.trim().is_empty()) else {
            return Err(ApiError::invalid_with_code(
                "Missing required parameter: 'model'.",
                "model",
                "missing_required_parameter",
            ));
        };
        let stream = self.stream.unwrap_or(false);
        let background = self.background.unwrap_or(false);
        let store = self.store.unwrap_or(true);
        if background && !store {
            return Err(invalid(
                "background",
                "a background response must be stored ('store' may not be false)",
            ));
        }
        let metadata = check_metadata(self.metadata)?;
        let items = normalise_input(self.input, id)?;
        let mut messages = Vec::new();
        if let Some(instructions) = &self.instructions {
            messages.push(json!({"role": "system", "content": instructions}));
        }
        if let Some(earlier) = continued {
            messages.extend(history_of(earlier)?);
        }
        messages.extend(items.iter().map(chat_message));
        crate::chat_api::messages::check(&messages, limits)
            .map_err(|err| retarget(err, "input"))?;
        let sampling = SamplingFields {
            model: Some(model.clone()),
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_output_tokens,
            stop: None,
            seed: None,
            presence_penalty: None,
            frequency_penalty: None,
            user: self.user.clone(),
        };
        let params = sampling
            .into_params(limits)
            .map_err(|err| retarget(err, "max_output_tokens"))?;
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert("messages".into(), Value::Array(messages));
        if let Some(t) = self.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(p) = self.top_p {
            body.insert("top_p".into(), json!(p));
        }
        if let Some(max) = self.max_output_tokens {
            body.insert("max_tokens".into(), json!(max));
        }
        if let Some(user) = self.user {
            body.insert("user".into(), json!(user));
        }
        // The history grows with every continuation; the job holds no more than a chat
        // completion request could.
        let size = serde_json::to_vec(&body).map_or(usize::MAX, |bytes| bytes.len());
        if size > limits.max_request_bytes {
            return Err(ApiError::invalid_with_code(
                format!(
                    "The conversation is too long: with its history this request is {size} bytes, \
                     above the {} this server accepts. Start a new conversation (without \
                     'previous_response_id') or send less.",
                    limits.max_request_bytes
                ),
                "input",
                "context_length_exceeded",
            ));
        }
        Ok(Prepared {
            params,
            body,
            items,
            metadata,
            store,
            background,
            stream,
            previous,
            instructions: self.instructions,
            temperature: self.temperature,
            top_p: self.top_p,
            max_output_tokens: self
                .max_output_tokens
                .map(|max| i32::try_from(max).unwrap_or(i32::MAX)),
        })
    }

    /// Options chatq accepts only with the value it implements.
    fn check_fixed_options(&self) -> Result<(), ApiError> {
        if let Some(text) = &self.text {
            let format = text.get("format").and_then(|f| f.get("type"));
            if format.is_some_and(|t| t != "text") {
                return Err(unsupported(
                    "text.format",
                    "only plain text output is offered",
                ));
            }
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(unsupported(
                "tools",
                "tools are not offered through the Responses API here; use /v1/chat/completions",
            ));
        }
        if let Some(choice) = &self.tool_choice
            && choice != "auto"
            && choice != "none"
        {
            return Err(unsupported("tool_choice", "no tools are offered"));
        }
        if let Some(truncation) = &self.truncation
            && truncation != "disabled"
        {
            return Err(unsupported("truncation", "only 'disabled' is offered"));
        }
        Ok(())
    }
}

/// Points a message error about the built chat messages at the request's own field.
fn retarget(err: ApiError, param: &str) -> ApiError {
    match err {
        ApiError::InvalidRequest {
            message,
            param: Some(_),
            code,
        } if param == "input" => ApiError::InvalidRequest {
            message: message.replace("'messages", "'input"),
            param: Some(param.to_owned()),
            code,
        },
        ApiError::InvalidRequest {
            message,
            param: Some(p),
            code,
        } if p == "max_tokens" => ApiError::InvalidRequest {
            message: message.replace("'max_tokens'", "'max_output_tokens'"),
            param: Some(param.to_owned()),
            code,
        },
        other => other,
    }
}

fn check_metadata(metadata: Option<Map<String, Value>>) -> Result<Value, ApiError> {
    let metadata = metadata.unwrap_or_default();
    crate::validate::check_metadata(&metadata)?;
    Ok(Value::Object(metadata))
}

/// The earlier response's conversation: the messages its job sent (without its instructions)
/// and its reply.
fn history_of(earlier: Continued) -> Result<Vec<Value>, ApiError> {
    if earlier.status != "succeeded" {
        return Err(invalid(
            "previous_response_id",
            "that response has not completed; continue from a completed response",
        ));
    }
    let mut messages = match earlier.messages {
        Some(Value::Array(messages)) => messages,
        _ => Vec::new(),
    };
    if earlier.had_instructions && !messages.is_empty() {
        messages.remove(0);
    }
    messages.push(json!({"role": "assistant", "content": earlier.reply.unwrap_or_default()}));
    Ok(messages)
}
