//! Request bodies and their limits. Everything is checked before anything is written, and each
//! error names the parameter it is about.

use chatq_common::chat::GenerationParams;
use chatq_common::settings::LimitSettings;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Longest conversation title, in characters.
pub const MAX_TITLE_CHARS: usize = 512;
/// Longest model name.
pub const MAX_MODEL_CHARS: usize = 256;
/// Metadata limits, as in the OpenAI API: 16 pairs, keys up to 64 characters, string values up to 512.
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
/// Longest feedback comment.
pub const MAX_COMMENT_CHARS: usize = 4000;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Most stop sequences, as in the OpenAI API.
pub const MAX_STOP_SEQUENCES: usize = 4;

/// `POST /v1/conversations`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
    /// Up to 16 string values, keys up to 64 characters, values up to 512.
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub metadata: Option<Map<String, Value>>,
}

/// `PATCH /v1/conversations/{id}`: a new title; an empty one (or `null`) leaves it untitled.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameConversation {
    pub title: Option<String>,
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Sampling parameters shared by sending a message and (as a subset) chat completions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingFields {
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub user: Option<String>,
}

/// `POST /v1/conversations/{id}/messages`. (serde cannot deny unknown fields through
/// `flatten`, so the sampling fields are spelled out again.)
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    pub content: String,
    pub model: Option<String>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    pub user: Option<String>,
    /// `false` keeps this turn out of the reply cache (neither served from it nor stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

impl SendMessage {
    pub fn sampling(&self) -> SamplingFields {
        SamplingFields {
            model: self.model.clone(),
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            user: self.user.clone(),
        }
    }
}

/// `POST /v1/messages/{id}/feedback`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    pub rating: i16,
    pub comment: Option<String>,
}

fn too_long(param: &str, max: usize, got: usize) -> ApiError {
    ApiError::invalid_with_code(
        format!(
            "Invalid '{param}': string too long. Expected a string with maximum length {max}, but got a string with length {got} instead."
        ),
        param,
        "string_above_max_length",
    )
}

/// Checks a string's length in characters.
pub fn check_len(param: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let len = value.chars().count();
    if len > max {
        return Err(too_long(param, max, len));
    }
    Ok(())
}

/// A message's content: not empty, not blank, not longer than `max_message_chars`.
pub fn check_content(param: &str, content: &str, limits: &LimitSettings) -> Result<(), ApiError> {
    if content.trim().is_empty() {
        return Err(ApiError::invalid_with_code(
            format!("Invalid '{param}': the message is empty."),
            param,
            "empty_content",
        ));
    }
    check_len(param, content, limits.max_message_chars)
}

fn check_range(param: &str, value: Option<f64>, min: f64, max: f64) -> Result<(), ApiError> {
    match value {
        Some(v) if !(min..=max).contains(&v) || v.is_nan() => Err(ApiError::invalid_with_code(
            format!("Invalid '{param}': {v} is not between {min} and {max}."),
            param,
            "invalid_value",
        )),
        _ => Ok(()),
    }
}

impl SamplingFields {
    /// Validates the fields and turns them into provider parameters. The model stays empty when
    /// none was named; it is resolved when the job is recorded.
    ///
    /// # Errors
    /// A value out of range or too long.
    pub fn into_params(self, limits: &LimitSettings) -> Result<GenerationParams, ApiError> {
        if let Some(model) = &self.model {
            if model.trim().is_empty() {
                return Err(ApiError::invalid(
                    "Invalid 'model': it must not be empty.",
                    "model",
                ));
            }
            check_len("model", model, MAX_MODEL_CHARS)?;
        }
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if let Some(max_tokens) = self.max_tokens
            && (max_tokens == 0 || max_tokens > limits.max_output_tokens)
        {
            return Err(ApiError::invalid_with_code(
                format!(
                    "Invalid 'max_tokens': {max_tokens} is not between 1 and {}.",
                    limits.max_output_tokens
                ),
                "max_tokens",
                "invalid_value",
            ));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(one)) => vec![one],
            Some(Stop::Many(many)) => many,
        };
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::invalid(
                format!("Invalid 'stop': at most {MAX_STOP_SEQUENCES} sequences are allowed."),
                "stop",
            ));
        }
        for sequence in &stop {
            check_len("stop", sequence, 256)?;
        }
        if let Some(user) = &self.user {
            check_len("user", user, 256)?;
        }
        Ok(GenerationParams {
            model: self.model.unwrap_or_default(),
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            stop,
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            user: self.user,
            n: None,
            no_cache: false,
        })
    }
}

impl RenameConversation {
    /// The title to store: trimmed, `None` when empty.
    ///
    /// # Errors
    /// A title too long.
    pub fn validated_title(&self) -> Result<Option<&str>, ApiError> {
        let title = self
            .title
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if let Some(title) = title {
            check_len("title", title, MAX_TITLE_CHARS)?;
        }
        Ok(title)
    }
}

impl CreateConversation {
    /// # Errors
    /// A field too long or metadata beyond its limits.
    pub fn validate(&self, limits: &LimitSettings) -> Result<(), ApiError> {
        if let Some(title) = &self.title {
            check_len("title", title, MAX_TITLE_CHARS)?;
        }
        if let Some(prompt) = &self.system_prompt {
            check_len("system_prompt", prompt, limits.max_message_chars)?;
        }
        if let Some(model) = &self.model {
            if model.trim().is_empty() {
                return Err(ApiError::invalid(
                    "Invalid 'model': it must not be empty.",
                    "model",
                ));
            }
            check_len("model", model, MAX_MODEL_CHARS)?;
        }
        if let Some(metadata) = &self.metadata {
            check_metadata(metadata)?;
        }
        Ok(())
    }
}

/// OpenAI's metadata rules, for every request that takes `metadata` (conversations, responses,
/// batches): at most 16 pairs, keys up to 64 characters, string values up to 512.
///
/// # Errors
/// 400 naming the pair at fault.
pub fn check_metadata(metadata: &Map<String, Value>) -> Result<(), ApiError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(ApiError::invalid(
            format!(
                "Invalid 'metadata': at most {MAX_METADATA_PAIRS} key-value pairs are allowed."
            ),
            "metadata",
        ));
    }
    for (key, value) in metadata {
        let param = format!("metadata.{key}");
        check_len(&param, key, MAX_METADATA_KEY_CHARS)?;
        let Some(text) = value.as_str() else {
            return Err(ApiError::invalid(
                format!("Invalid '{param}': metadata values must be strings."),
                param,
            ));
        };
        check_len(&param, text, MAX_METADATA_VALUE_CHARS)?;
    }
    Ok(())
}

impl Feedback {
    /// # Errors
    /// A rating other than 1 or -1, or a comment too long.
    pub fn validate(&self) -> Result<(), ApiError> {
        if !matches!(self.rating, 1 | -1) {
            return Err(ApiError::invalid_with_code(
                format!(
                    "Invalid 'rating': {} is not 1 (good) or -1 (bad).",
                    self.rating
                ),
                "rating",
                "invalid_value",
            ));
        }
        if let Some(comment) = &self.comment {
            check_len("comment", comment, MAX_COMMENT_CHARS)?;
        }
        Ok(())
    }
}

/// An `Idempotency-Key` header: printable ASCII, at most 255 characters.
///
/// # Errors
/// The key is empty, too long or not printable.
pub fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_CHARS
        && key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!(
                "Invalid 'Idempotency-Key' header: use 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters."
            ),
            "Idempotency-Key",
        ))
    }
}

/// Refuses a NUL character (`\u0000`) anywhere in a JSON body: in any string, or any key.
///
/// Postgres stores no NUL in `text` or `jsonb`, so one would fail the statement that records it
/// (and, in a group commit, every other request recorded with it). Every JSON body passes through
/// here before it is read, so no field anywhere can carry one; the error names the first field
/// that does, in the path notation of the other errors (`messages[0].content`).
///
/// # Errors
/// 400 `invalid_value`, naming the field.
pub fn refuse_nul(raw: &[u8]) -> Result<(), ApiError> {
    // A NUL can only arrive escaped (JSON allows no raw control character in a string), so a
    // body without the escape costs one scan; only one with it is parsed again to find where.
    if !raw.windows(6).any(|window| window == b"\\u0000") {
        return Ok(());
    }
    // A body that is not JSON gets its syntax error from the parser proper.
    let Ok(body) = serde_json::from_slice::<Value>(raw) else {
        return Ok(());
    };
    match nul_path(&body, "") {
        None => Ok(()),
        Some(path) => {
            let param = if path.is_empty() {
                ".".to_owned()
            } else {
                path
            };
            Err(ApiError::invalid_with_code(
                format!("Invalid '{param}': text may not contain the NUL character (\\u0000)."),
                param,
                "invalid_value",
            ))
        }
    }
}

/// The path of the first string or key in `value` that holds a NUL.
fn nul_path(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(text) => text.contains('\0').then(|| path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| nul_path(item, &format!("{path}[{index}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            // The key is echoed in the error; a NUL in it is shown escaped.
            let shown = key.replace('\0', "\\u0000");
            let inner = if path.is_empty() {
                shown
            } else {
                format!("{path}.{shown}")
            };
            if key.contains('\0') {
                return Some(inner);
            }
            nul_path(item, &inner)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}
