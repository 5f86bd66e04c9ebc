//! What a provider is asked and what it answers, independent of any one provider's wire format.

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// Parses the text stored in Postgres (a check constraint keeps it to these three).
    pub fn from_db(text: &str) -> Option<Self> {
        match text {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// One message of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Sampling parameters passed through to the provider. The model is always resolved (request,
/// then conversation, then the `model` setting) before a job is queued.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Choices asked for (`n`); one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// The client opted out of the reply cache (`Cache-Control: no-cache`, or `"cache": false`):
    /// this request neither reads nor fills it. Never sent to the provider.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
}

impl GenerationParams {
    /// Whether a reply to these parameters may come from the reply cache: the request asks for
    /// a reproducible answer (temperature 0, or a fixed seed) and did not opt out.
    pub fn cacheable(&self) -> bool {
        !self.no_cache && (self.temperature == Some(0.0) || self.seed.is_some())
    }
}

/// Token counts, as the provider reports them (or as estimated when it reports none), with the
/// cached prompt tokens and the reasoning tokens when the provider reports those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens the provider served from its prompt cache.
    #[serde(default)]
    pub cached_tokens: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompletionTokensDetails {
    /// Completion tokens spent on reasoning the reply does not show.
    #[serde(default)]
    pub reasoning_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: None,
            completion_tokens_details: None,
        }
    }
}

/// A rough token count for text, used to bound history windows and rate budgets before the
/// provider reports real usage: about four characters a token for English text.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// The text of a chat completion request's messages, for what reads only text: token estimates
/// and the simulated provider. Developer messages count as system, tool results as user; content
/// parts other than text, and tool-call arguments, are counted as their JSON text.
pub fn text_messages(body: &serde_json::Map<String, serde_json::Value>) -> Vec<ChatMessage> {
    use serde_json::Value;
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Vec::new();
    };
    messages
        .iter()
        .map(|message| {
            let role = match message.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => Role::System,
                Some("assistant") => Role::Assistant,
                _ => Role::User,
            };
            let mut text = String::new();
            match message.get("content") {
                Some(Value::String(content)) => text.push_str(content),
                Some(Value::Array(parts)) => {
                    for part in parts {
                        match part.get("text").and_then(Value::as_str) {
                            Some(part_text) => text.push_str(part_text),
                            None => text.push_str(&part.to_string()),
                        }
                    }
                }
                _ => {}
            }
            if let Some(calls) = message.get("tool_calls") {
                text.push_str(&calls.to_string());
            }
            ChatMessage::new(role, text)
        })
        .collect()
}
