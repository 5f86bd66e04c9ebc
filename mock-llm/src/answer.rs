//! What the mock answers, decided from the request alone, so every test can predict it:
//!
//! - with `tools` (and `tool_choice` not `none`) and the last message not a tool result: a call
//!   of the chosen tool (or of the first two with parallel calls allowed), its arguments an
//!   example of its parameters' schema, `finish_reason: "tool_calls"`;
//! - after tool results: `Tool results: ` and their contents, so a test sees they arrived;
//! - with a `json_schema` response format: an example instance of the schema, or a refusal when
//!   the last user message asks the model to refuse (contains `please refuse`); with
//!   `json_object`: `{"answer": <the text reply>}`;
//! - otherwise the simulated provider's deterministic text.
//!
//! `n` gives that many choices (choice `i > 0` a different text), `logprobs` log probabilities for
//! every content piece, and `reasoning_effort` some reasoning text before the content.

use chatq_common::chat::{ChatMessage, Role};
use serde_json::{Map, Value, json};

use super::reply::reply_tokens;

/// One streamed piece of a choice.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Reasoning(String),
    /// A piece of a refusal, which comes instead of content.
    Refusal(String),
    /// The start of tool call `index`: its id and name, no arguments yet.
    CallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// More arguments of tool call `index`.
    CallArguments {
        index: u32,
        arguments: String,
    },
}

/// One planned choice.
#[derive(Debug, Clone)]
pub struct PlannedChoice {
    pub pieces: Vec<Piece>,
    pub finish_reason: String,
}

/// The whole planned answer.
#[derive(Debug, Clone)]
pub struct Plan {
    pub choices: Vec<PlannedChoice>,
    /// Log probabilities with every text piece, with this many alternatives.
    pub logprobs: Option<usize>,
}

/// Size of the pieces JSON and tool arguments are streamed in.
const PIECE_CHARS: usize = 8;

/// Plans the answer to `request`, whose messages read as text are `messages`; a text reply is
/// `count` tokens long (of `fixed` text, when the mock is told to answer with it), ending with
/// `finish_reason`.
pub fn plan(
    request: &Value,
    messages: &[ChatMessage],
    count: usize,
    finish_reason: &str,
    fixed: Option<&str>,
) -> Plan {
    let n = request["n"].as_u64().unwrap_or(1).clamp(1, 128);
    let logprobs = (request["logprobs"].as_bool() == Some(true))
        .then(|| usize::try_from(request["top_logprobs"].as_u64().unwrap_or(0)).unwrap_or(0));
    let reasoning = request["reasoning_effort"]
        .as_str()
        .is_some_and(|effort| effort != "none");
    let choices = (0..n)
        .map(|i| {
            let mut choice = plan_choice(request, messages, count, finish_reason, fixed, i);
            if reasoning {
                let thoughts = ["Thinking ", "it ", "over."];
                let mut pieces: Vec<Piece> = thoughts
                    .iter()
                    .map(|t| Piece::Reasoning((*t).to_owned()))
                    .collect();
                pieces.append(&mut choice.pieces);
                choice.pieces = pieces;
            }
            choice
        })
        .collect();
    Plan { choices, logprobs }
}

fn plan_choice(
    request: &Value,
    messages: &[ChatMessage],
    count: usize,
    finish_reason: &str,
    fixed: Option<&str>,
    index: u64,
) -> PlannedChoice {
    let all = request["messages"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let last_is_tool_result = all
        .last()
        .is_some_and(|m| m["role"].as_str() == Some("tool"));
    if !last_is_tool_result && let Some(calls) = tool_calls(request, messages, index) {
        return PlannedChoice {
            pieces: calls,
            finish_reason: "tool_calls".into(),
        };
    }
    if last_is_tool_result {
        let results: Vec<String> = all
            .iter()
            .rev()
            .take_while(|m| m["role"].as_str() == Some("tool"))
            .map(|m| content_text(&m["content"]))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let text = format!("Tool results: {}", results.join("; "));
        return PlannedChoice {
            pieces: split(&text),
            finish_reason: "stop".into(),
        };
    }
    let text_tokens = || {
        if let Some(text) = fixed {
            return fixed_reply_tokens(text, count);
        }
        let mut prompt = messages.to_vec();
        if index > 0 {
            // Each further choice answers as if asked a little differently.
            prompt.push(ChatMessage::new(Role::System, format!("choice {index}")));
        }
        reply_tokens(&prompt, count)
    };
    match request["response_format"]["type"].as_str() {
        Some("json_schema") if asks_for_a_refusal(all) => PlannedChoice {
            pieces: chunks(REFUSAL).into_iter().map(Piece::Refusal).collect(),
            finish_reason: "stop".into(),
        },
        Some("json_schema") => {
            let schema = &request["response_format"]["json_schema"]["schema"];
            PlannedChoice {
                pieces: split(&example(schema, "answer").to_string()),
                finish_reason: "stop".into(),
            }
        }
        Some("json_object") => PlannedChoice {
            pieces: split(&json!({ "answer": text_tokens().concat() }).to_string()),
            finish_reason: "stop".into(),
        },
        _ => PlannedChoice {
            pieces: text_tokens().into_iter().map(Piece::Text).collect(),
            finish_reason: finish_reason.to_owned(),
        },
    }
}

/// What the mock says when it refuses.
pub const REFUSAL: &str = "I'm sorry, I cannot help with that request.";

/// Whether the last user message asks the model to refuse.
fn asks_for_a_refusal(messages: &[Value]) -> bool {
    messages
        .iter()
        .rev()
        .find(|m| m["role"].as_str() == Some("user"))
        .is_some_and(|m| content_text(&m["content"]).contains("please refuse"))
}

/// The tool calls to answer with, if the request offers tools and lets the model call them.
fn tool_calls(request: &Value, messages: &[ChatMessage], choice: u64) -> Option<Vec<Piece>> {
    let tools: Vec<&Map<String, Value>> = request["tools"]
        .as_array()?
        .iter()
        .filter(|t| t["type"].as_str() == Some("function"))
        .filter_map(|t| t["function"].as_object())
        .collect();
    if tools.is_empty() {
        return None;
    }
    let chosen: Vec<&Map<String, Value>> = match &request["tool_choice"] {
        Value::String(mode) if mode == "none" => return None,
        Value::Object(choice) => {
            let name = choice["function"]["name"].as_str()?;
            vec![*tools.iter().find(|t| t["name"].as_str() == Some(name))?]
        }
        _ if request["parallel_tool_calls"].as_bool() != Some(false) => {
            tools.iter().take(2).copied().collect()
        }
        _ => tools.iter().take(1).copied().collect(),
    };
    let seed = fingerprint(messages) ^ choice;
    let mut pieces = Vec::new();
    for (index, tool) in (0..).zip(chosen) {
        let name = tool["name"].as_str().unwrap_or("tool").to_owned();
        let id = format!("call_{:016x}", seed.wrapping_add(u64::from(index) + 1));
        let arguments = example(&tool["parameters"], &name).to_string();
        pieces.push(Piece::CallStart { index, id, name });
        for part in chunks(&arguments) {
            pieces.push(Piece::CallArguments {
                index,
                arguments: part,
            });
        }
    }
    Some(pieces)
}

/// An example value of a JSON schema: the first `enum` value, otherwise one of the type (an
/// object with every property). Never resolves `$ref`.
pub fn example(schema: &Value, name: &str) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(first) = schema[key].as_array().and_then(|e| e.first()) {
            return example(first, name);
        }
    }
    let kind = match &schema["type"] {
        Value::Array(types) => types.first().and_then(Value::as_str),
        other => other.as_str(),
    };
    match kind {
        Some("string") => Value::String(format!("{name} example")),
        Some("integer") => json!(schema["minimum"].as_i64().unwrap_or(1)),
        Some("number") => json!(schema["minimum"].as_f64().unwrap_or(1.5)),
        Some("boolean") => json!(true),
        Some("null") => Value::Null,
        Some("array") => json!([example(&schema["items"], name)]),
        _ => {
            let properties = schema["properties"].as_object();
            Value::Object(
                properties
                    .into_iter()
                    .flatten()
                    .map(|(key, property)| (key.clone(), example(property, key)))
                    .collect(),
            )
        }
    }
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .concat(),
        _ => String::new(),
    }
}

/// A fixed reply cut into tokens, one a word with the whitespace before it, at most `count`.
fn fixed_reply_tokens(text: &str, count: usize) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        tokens.push(if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        });
    }
    tokens.truncate(count.max(1));
    tokens
}

/// Text as pieces of a few characters.
fn split(text: &str) -> Vec<Piece> {
    chunks(text).into_iter().map(Piece::Text).collect()
}

fn chunks(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(PIECE_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

/// A stable number for a prompt (FNV-1a over its text), so tool call ids repeat with it.
fn fingerprint(messages: &[ChatMessage]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for message in messages {
        for byte in message.content.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The log probabilities of one text piece, as OpenAI shapes them.
pub fn logprobs_of(text: &str, position: usize, alternatives: usize) -> Value {
    let logprob = -0.125 * (position % 7) as f64;
    let entry = |token: &str, logprob: f64| json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() });
    let top: Vec<Value> = (0..alternatives)
        .map(|k| {
            if k == 0 {
                entry(text, logprob)
            } else {
                entry(&format!("alt{k}"), logprob - k as f64)
            }
        })
        .collect();
    let mut first = entry(text, logprob);
    first["top_logprobs"] = Value::Array(top);
    json!({ "content": [first], "refusal": null })
}
