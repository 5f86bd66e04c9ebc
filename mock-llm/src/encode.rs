//! A planned answer ([`crate::answer`]) in the OpenAI wire shapes: each piece as a streamed
//! chunk's `delta`, or each choice whole.

use serde_json::{Value, json};

use super::answer::{self, Piece, PlannedChoice};

/// A streamed piece as a chunk's `delta`, and its log probabilities.
pub(super) fn piece_delta(
    piece: &Piece,
    position: usize,
    logprobs: Option<usize>,
) -> (Value, Value) {
    match piece {
        Piece::Text(text) => (
            json!({ "content": text }),
            logprobs.map_or(Value::Null, |top| answer::logprobs_of(text, position, top)),
        ),
        Piece::Reasoning(text) => (json!({ "reasoning_content": text }), Value::Null),
        Piece::Refusal(text) => (json!({ "refusal": text }), Value::Null),
        Piece::CallStart { index, id, name } => (
            json!({ "tool_calls": [{"index": index, "id": id, "type": "function",
                                    "function": {"name": name, "arguments": ""}}] }),
            Value::Null,
        ),
        Piece::CallArguments { index, arguments } => (
            json!({ "tool_calls": [{"index": index, "function": {"arguments": arguments}}] }),
            Value::Null,
        ),
    }
}

/// A planned choice as a whole (non-streamed) choice.
pub(super) fn whole_choice(index: u32, choice: &PlannedChoice, logprobs: Option<usize>) -> Value {
    let mut content: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut refusal: Option<String> = None;
    let mut calls: Vec<Value> = Vec::new();
    let mut tokens: Vec<Value> = Vec::new();
    for (position, piece) in choice.pieces.iter().enumerate() {
        match piece {
            Piece::Text(text) => {
                content.get_or_insert_with(String::new).push_str(text);
                if let Some(top) = logprobs {
                    tokens.push(answer::logprobs_of(text, position, top)["content"][0].clone());
                }
            }
            Piece::Reasoning(text) => reasoning.get_or_insert_with(String::new).push_str(text),
            Piece::Refusal(text) => refusal.get_or_insert_with(String::new).push_str(text),
            Piece::CallStart { id, name, .. } => calls.push(json!({
                "id": id, "type": "function", "function": {"name": name, "arguments": ""}
            })),
            Piece::CallArguments { index, arguments } => {
                if let Some(call) = calls.get_mut(*index as usize) {
                    let so_far = call["function"]["arguments"].as_str().unwrap_or_default();
                    call["function"]["arguments"] = json!(format!("{so_far}{arguments}"));
                }
            }
        }
    }
    let mut message = json!({ "role": "assistant", "content": content, "refusal": refusal });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if let Some(reasoning) = reasoning {
        message["reasoning_content"] = json!(reasoning);
    }
    json!({
        "index": index,
        "message": message,
        "logprobs": logprobs.map(|_| json!({ "content": tokens, "refusal": null })),
        "finish_reason": choice.finish_reason,
    })
}
