//! The input of a response: a string or message items with text parts, normalised into the
//! message items a response keeps (each with its id), and each item as the chat message the
//! provider is sent.

use chatq_common::ids::ResponseId;
use serde_json::{Value, json};

use super::request::{invalid, unsupported};
use crate::error::ApiError;

/// The id of input item `index` of a response.
fn item_id(response: ResponseId, index: usize) -> String {
    format!("msg_{}_{index}", response.as_uuid().simple())
}

/// The input as message items `{id, type, role, status, content: [{type, text}]}`.
pub(super) fn normalise_input(
    input: Option<Value>,
    response: ResponseId,
) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_with_code(
                "Missing required parameter: 'input'.",
                "input",
                "missing_required_parameter",
            ));
        }
        Some(Value::String(text)) => {
            if text.is_empty() {
                return Err(invalid("input", "it must not be empty"));
            }
            vec![json!({"role": "user", "content": text})]
        }
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(invalid("input", "it must not be empty")),
        Some(_) => return Err(invalid("input", "expected a string or a list of items")),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| normalise_item(index, item, response))
        .collect()
}

fn normalise_item(index: usize, item: Value, response: ResponseId) -> Result<Value, ApiError> {
    let at = format!("input[{index}]");
    let Value::Object(item) = item else {
        return Err(invalid(&at, "expected an object"));
    };
    match item.get("type").and_then(Value::as_str) {
        None | Some("message") => {}
        Some(other) => {
            return Err(unsupported(
                &format!("{at}.type"),
                format!("'{other}' items are not offered; send message items"),
            ));
        }
    }
    let role = match item.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant" | "system" | "developer")) => role,
        _ => {
            return Err(invalid(
                &format!("{at}.role"),
                "expected 'user', 'assistant', 'system' or 'developer'",
            ));
        }
    };
    let part_type = if role == "assistant" {
        "output_text"
    } else {
        "input_text"
    };
    let content: Vec<Value> = match item.get("content") {
        Some(Value::String(text)) => vec![text_part(part_type, text)],
        Some(Value::Array(parts)) if !parts.is_empty() => parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let at = format!("{at}.content[{i}]");
                let kind = part.get("type").and_then(Value::as_str);
                let text = part.get("text").and_then(Value::as_str);
                match (kind, text) {
                    (Some("input_text" | "output_text" | "text"), Some(text)) => {
                        Ok(text_part(part_type, text))
                    }
                    (Some(kind), _) if !matches!(kind, "input_text" | "output_text" | "text") => {
                        Err(unsupported(
                            &format!("{at}.type"),
                            format!("'{kind}' parts are not offered; send text parts"),
                        ))
                    }
                    _ => Err(invalid(
                        &at,
                        "expected {\"type\": \"input_text\", \"text\": …}",
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(
                &format!("{at}.content"),
                "expected a string or a non-empty list of text parts",
            ));
        }
    };
    Ok(json!({
        "id": item_id(response, index),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": content,
    }))
}

fn text_part(kind: &str, text: &str) -> Value {
    if kind == "output_text" {
        json!({"type": kind, "text": text, "annotations": []})
    } else {
        json!({"type": kind, "text": text})
    }
}

/// The chat message an input item becomes (`developer` is sent as `system`, which every
/// chat-completions provider knows).
pub(super) fn chat_message(item: &Value) -> Value {
    let role = match item["role"].as_str() {
        Some("developer") | None => "system",
        Some(role) => role,
    };
    let texts: Vec<&str> = item["content"]
        .as_array()
        .map(|parts| parts.iter().filter_map(|p| p["text"].as_str()).collect())
        .unwrap_or_default();
    let content = match texts.as_slice() {
        [one] => json!(one),
        many => Value::Array(
            many.iter()
                .map(|text| json!({"type": "text", "text": text}))
                .collect(),
        ),
    };
    json!({"role": role, "content": content})
}
