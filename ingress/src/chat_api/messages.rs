//! The messages of a chat completion: every role of the OpenAI API (system, developer, user,
//! assistant with tool calls, tool results), text and media content parts, checked for shape and
//! size. chatq never opens what they carry: an image URL is passed on, not fetched.

use std::collections::HashSet;

use chatq_common::settings::LimitSettings;
use serde_json::{Map, Value};

use super::request::{invalid, unsupported};
use crate::error::ApiError;
use crate::validate::check_len;

/// Longest `name` of a message, or `id` of a tool call.
const MAX_NAME_CHARS: usize = 256;

/// What the messages of one request carry in all, against the request's limits.
#[derive(Default)]
struct Totals {
    media_parts: usize,
    media_bytes: usize,
    /// Ids of the tool calls assistant messages made so far: a tool result must answer one.
    tool_call_ids: HashSet<String>,
}

/// Checks every message.
///
/// # Errors
/// 400 naming the first message (and part) that is wrong; 413 when inline media is over
/// `max_media_bytes`.
pub fn check(messages: &[Value], limits: &LimitSettings) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_with_code(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "messages",
            "empty_array",
        ));
    }
    let mut totals = Totals::default();
    for (index, message) in messages.iter().enumerate() {
        check_message(&format!("messages[{index}]"), message, limits, &mut totals)?;
    }
    Ok(())
}

fn check_message(
    at: &str,
    message: &Value,
    limits: &LimitSettings,
    totals: &mut Totals,
) -> Result<(), ApiError> {
    let Some(message) = message.as_object() else {
        return Err(invalid(at, "expected an object"));
    };
    let role_at = format!("{at}.role");
    let role = match message.get("role") {
        Some(Value::String(role)) => role.as_str(),
        Some(_) => return Err(invalid(&role_at, "expected a string")),
        None => {
            return Err(ApiError::invalid_with_code(
                format!("Missing required parameter: '{role_at}'."),
                role_at,
                "missing_required_parameter",
            ));
        }
    };
    if let Some(name) = message.get("name") {
        let name_at = format!("{at}.name");
        let name = name
            .as_str()
            .ok_or_else(|| invalid(&name_at, "expected a string"))?;
        check_len(&name_at, name, MAX_NAME_CHARS)?;
    }
    let content_at = format!("{at}.content");
    let content = message.get("content").filter(|c| !c.is_null());
    match role {
        "system" | "developer" => {
            let content = required(content, &content_at)?;
            check_text_content(&content_at, content, limits, &["text"])
        }
        "user" => {
            let content = required(content, &content_at)?;
            check_user_content(&content_at, content, limits, totals)
        }
        "assistant" => check_assistant(at, message, content, limits, totals),
        "tool" => {
            let id_at = format!("{at}.tool_call_id");
            let id = match message.get("tool_call_id") {
                Some(Value::String(id)) => id,
                Some(_) => return Err(invalid(&id_at, "expected a string")),
                None => {
                    return Err(ApiError::invalid_with_code(
                        format!(
                            "Missing required parameter: '{id_at}' (a tool message answers the \
                             tool call with this id)."
                        ),
                        id_at,
                        "missing_required_parameter",
                    ));
                }
            };
            if !totals.tool_call_ids.contains(id) {
                return Err(ApiError::invalid_with_code(
                    format!(
                        "Invalid '{id_at}': messages with role 'tool' must answer a tool call of \
                         an earlier assistant message, and none has the id '{id}'."
                    ),
                    id_at,
                    "invalid_value",
                ));
            }
            let content = required(content, &content_at)?;
            check_text_content(&content_at, content, limits, &["text"])
        }
        "function" => {
            if !message.get("name").is_some_and(Value::is_string) {
                return Err(ApiError::invalid_with_code(
                    format!("Missing required parameter: '{at}.name'."),
                    format!("{at}.name"),
                    "missing_required_parameter",
                ));
            }
            let content = required(content, &content_at)?;
            check_text_content(&content_at, content, limits, &["text"])
        }
        other => Err(unsupported(
            &role_at,
            format!(
                "Invalid '{role_at}': '{other}' is not a role (use system, developer, user, \
                 assistant or tool)."
            ),
        )),
    }
}

fn required<'a>(content: Option<&'a Value>, at: &str) -> Result<&'a Value, ApiError> {
    content.ok_or_else(|| {
        ApiError::invalid_with_code(
            format!("Missing required parameter: '{at}'."),
            at,
            "missing_required_parameter",
        )
    })
}

/// A string, or an array of parts of the given text types.
fn check_text_content(
    at: &str,
    content: &Value,
    limits: &LimitSettings,
    part_types: &[&str],
) -> Result<(), ApiError> {
    match content {
        Value::String(text) => check_len(at, text, limits.max_message_chars),
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                let part_at = format!("{at}[{j}]");
                let kind = part_type(&part_at, part)?;
                if !part_types.contains(&kind) {
                    return Err(unsupported(
                        &part_at,
                        format!(
                            "Invalid '{part_at}': a part of type '{kind}' is not allowed here \
                             (expected {}).",
                            part_types.join(" or ")
                        ),
                    ));
                }
                check_text_part(&part_at, part, kind, limits)?;
            }
            Ok(())
        }
        _ => Err(invalid(
            at,
            "expected a string or an array of content parts",
        )),
    }
}

fn part_type<'a>(at: &str, part: &'a Value) -> Result<&'a str, ApiError> {
    part.get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(at, "expected an object with a 'type'"))
}

/// A `text` or `refusal` part: its text under the key of its type.
fn check_text_part(
    at: &str,
    part: &Value,
    kind: &str,
    limits: &LimitSettings,
) -> Result<(), ApiError> {
    let text_at = format!("{at}.{kind}");
    let text = part
        .get(kind)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&text_at, "expected a string"))?;
    check_len(&text_at, text, limits.max_message_chars)
}

fn check_user_content(
    at: &str,
    content: &Value,
    limits: &LimitSettings,
    totals: &mut Totals,
) -> Result<(), ApiError> {
    let Value::Array(parts) = content else {
        return check_text_content(at, content, limits, &["text"]);
    };
    for (j, part) in parts.iter().enumerate() {
        let part_at = format!("{at}[{j}]");
        let kind = part_type(&part_at, part)?;
        let inline = match kind {
            "text" => {
                check_text_part(&part_at, part, kind, limits)?;
                continue;
            }
            "image_url" => check_image(&part_at, part)?,
            "input_audio" => {
                let audio = object_field(&part_at, part, "input_audio")?;
                let data = string_field(&format!("{part_at}.input_audio"), audio, "data")?;
                string_field(&format!("{part_at}.input_audio"), audio, "format")?;
                data.len()
            }
            "file" => {
                let file = object_field(&part_at, part, "file")?;
                match (file.get("file_data"), file.get("file_id")) {
                    (Some(Value::String(data)), _) => data.len(),
                    (None, Some(Value::String(_))) => 0,
                    _ => {
                        return Err(invalid(
                            &format!("{part_at}.file"),
                            "expected 'file_data' or 'file_id' as a string",
                        ));
                    }
                }
            }
            other => {
                return Err(unsupported(
                    &part_at,
                    format!(
                        "Invalid '{part_at}': '{other}' is not a content part type (use text, \
                         image_url, input_audio or file)."
                    ),
                ));
            }
        };
        totals.media_parts += 1;
        if totals.media_parts > limits.max_media_parts {
            return Err(ApiError::invalid_with_code(
                format!(
                    "Invalid '{part_at}': a request may carry at most {} image, audio and file \
                     parts.",
                    limits.max_media_parts
                ),
                part_at,
                "too_many_media_parts",
            ));
        }
        totals.media_bytes += inline;
        if totals.media_bytes > limits.max_media_bytes {
            return Err(ApiError::ContentTooLarge {
                message: format!(
                    "The inline media of this request (data URLs, audio and files) is larger \
                     than the {}-byte limit, reached at '{part_at}'. Send images by URL, or fewer \
                     or smaller ones.",
                    limits.max_media_bytes
                ),
                param: part_at,
            });
        }
    }
    Ok(())
}

/// An `image_url` part: an http(s) URL (passed on, never fetched here) or a data URL. Returns
/// the bytes it carries inline.
fn check_image(at: &str, part: &Value) -> Result<usize, ApiError> {
    let image = object_field(at, part, "image_url")?;
    let image_at = format!("{at}.image_url");
    let url = string_field(&image_at, image, "url")?;
    if let Some(detail) = image.get("detail")
        && !matches!(detail.as_str(), Some("auto" | "low" | "high"))
    {
        return Err(invalid(
            &format!("{image_at}.detail"),
            "expected 'auto', 'low' or 'high'",
        ));
    }
    if url.starts_with("data:") {
        if !url.starts_with("data:image/") || !url.contains(";base64,") {
            return Err(invalid(
                &format!("{image_at}.url"),
                "a data URL must be data:image/<type>;base64,<data>",
            ));
        }
        Ok(url.len())
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Ok(0)
    } else {
        Err(invalid(
            &format!("{image_at}.url"),
            "expected an http(s) URL or a data:image URL",
        ))
    }
}

fn check_assistant(
    at: &str,
    message: &Map<String, Value>,
    content: Option<&Value>,
    limits: &LimitSettings,
    totals: &mut Totals,
) -> Result<(), ApiError> {
    let content_at = format!("{at}.content");
    if let Some(content) = content {
        check_text_content(&content_at, content, limits, &["text", "refusal"])?;
    }
    if let Some(refusal) = message.get("refusal").filter(|r| !r.is_null()) {
        let refusal_at = format!("{at}.refusal");
        let refusal = refusal
            .as_str()
            .ok_or_else(|| invalid(&refusal_at, "expected a string"))?;
        check_len(&refusal_at, refusal, limits.max_message_chars)?;
    }
    let calls = match message.get("tool_calls").filter(|c| !c.is_null()) {
        None => &[][..],
        Some(Value::Array(calls)) => calls.as_slice(),
        Some(_) => return Err(invalid(&format!("{at}.tool_calls"), "expected an array")),
    };
    for (j, call) in calls.iter().enumerate() {
        let call_at = format!("{at}.tool_calls[{j}]");
        let Some(call) = call.as_object() else {
            return Err(invalid(&call_at, "expected an object"));
        };
        let id = string_field(&call_at, call, "id")?;
        check_len(&format!("{call_at}.id"), id, MAX_NAME_CHARS)?;
        if call.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(&format!("{call_at}.type"), "expected 'function'"));
        }
        let function_at = format!("{call_at}.function");
        let function = call
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid(&function_at, "expected an object"))?;
        string_field(&function_at, function, "name")?;
        let arguments = string_field(&function_at, function, "arguments")?;
        check_len(
            &format!("{function_at}.arguments"),
            arguments,
            limits.max_message_chars,
        )?;
        totals.tool_call_ids.insert(id.to_owned());
    }
    if content.is_none() && calls.is_empty() && message.get("function_call").is_none() {
        return Err(ApiError::invalid_with_code(
            format!(
                "Missing required parameter: '{content_at}' (an assistant message needs content \
                 or tool_calls)."
            ),
            content_at,
            "missing_required_parameter",
        ));
    }
    Ok(())
}

fn object_field<'a>(
    at: &str,
    object: &'a Value,
    key: &str,
) -> Result<&'a Map<String, Value>, ApiError> {
    object
        .get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(&format!("{at}.{key}"), "expected an object"))
}

fn string_field<'a>(
    at: &str,
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a str, ApiError> {
    match object.get(key) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(invalid(&format!("{at}.{key}"), "expected a string")),
        None => Err(ApiError::invalid_with_code(
            format!("Missing required parameter: '{at}.{key}'."),
            format!("{at}.{key}"),
            "missing_required_parameter",
        )),
    }
}
