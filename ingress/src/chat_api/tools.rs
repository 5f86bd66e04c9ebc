//! Tools, `tool_choice` and `response_format`: checked for shape and size, then passed on. A JSON
//! schema (a tool's parameters, a `json_schema` response format) is never executed or resolved
//! here: it must be a JSON object within `max_schema_bytes` and a bounded depth, and the provider
//! interprets it.

use chatq_common::settings::LimitSettings;
use serde_json::{Map, Value};

use super::request::{invalid, unsupported};
use crate::error::ApiError;

/// Deepest nesting of objects and arrays a schema may have (OpenAI's strict mode allows 10 levels
/// of properties, each two JSON levels deep).
const MAX_SCHEMA_DEPTH: usize = 64;

/// Checks `tools` and returns the names of the functions they offer.
///
/// # Errors
/// A tool of the wrong shape, a bad name, too many tools or a schema over its limits.
pub fn check_tools(
    tools: Option<&[Value]>,
    limits: &LimitSettings,
) -> Result<Vec<String>, ApiError> {
    let Some(tools) = tools else {
        return Ok(Vec::new());
    };
    if tools.is_empty() {
        return Err(invalid(
            "tools",
            "empty array; leave 'tools' out to offer none",
        ));
    }
    if tools.len() > limits.max_tools {
        return Err(invalid(
            "tools",
            format!(
                "{} tools were given; the most is {}",
                tools.len(),
                limits.max_tools
            ),
        ));
    }
    let mut names = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let kind = tool.get("type").and_then(Value::as_str);
        let (key, name) = match kind {
            Some("function") => ("function", function_name(&at, tool, "function")?),
            Some("custom") => ("custom", function_name(&at, tool, "custom")?),
            Some(other) => {
                return Err(unsupported(
                    &format!("{at}.type"),
                    format!(
                        "Invalid '{at}.type': '{other}' is not a tool type (use 'function' or \
                         'custom')."
                    ),
                ));
            }
            None => return Err(invalid(&format!("{at}.type"), "expected 'function'")),
        };
        let definition = &tool[key];
        if let Some(description) = definition.get("description")
            && !description.is_string()
        {
            return Err(invalid(
                &format!("{at}.{key}.description"),
                "expected a string",
            ));
        }
        if let Some(strict) = definition.get("strict")
            && !strict.is_boolean()
        {
            return Err(invalid(&format!("{at}.{key}.strict"), "expected a boolean"));
        }
        if let Some(parameters) = definition.get("parameters") {
            check_schema(&format!("{at}.{key}.parameters"), parameters, limits)?;
        }
        if names.contains(&name) {
            return Err(invalid(
                &format!("{at}.{key}.name"),
                format!("'{name}' names two tools"),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// The name of a tool, as OpenAI allows it: 1 to 64 letters, digits, `_` or `-`.
fn function_name(at: &str, tool: &Value, key: &str) -> Result<String, ApiError> {
    let Some(definition) = tool.get(key).and_then(Value::as_object) else {
        return Err(invalid(&format!("{at}.{key}"), "expected an object"));
    };
    let name_at = format!("{at}.{key}.name");
    let Some(name) = definition.get("name").and_then(Value::as_str) else {
        return Err(ApiError::invalid_with_code(
            format!("Missing required parameter: '{name_at}'."),
            name_at,
            "missing_required_parameter",
        ));
    };
    check_name(&name_at, name)?;
    Ok(name.to_owned())
}

fn check_name(at: &str, name: &str) -> Result<(), ApiError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            at,
            format!("'{name}' must be 1 to 64 letters, digits, underscores or dashes"),
        ))
    }
}

/// Checks `tool_choice` against the tools offered.
///
/// # Errors
/// An unknown mode, a function that is not among the tools, or a choice without tools.
pub fn check_tool_choice(choice: Option<&Value>, tools: &[String]) -> Result<(), ApiError> {
    let Some(choice) = choice else {
        return Ok(());
    };
    let named = match choice {
        Value::String(mode) if matches!(mode.as_str(), "none" | "auto" | "required") => {
            if tools.is_empty() && mode != "none" {
                return Err(ApiError::invalid(
                    "Invalid 'tool_choice': it is only allowed when 'tools' are given.",
                    "tool_choice",
                ));
            }
            return Ok(());
        }
        Value::Object(object) => match object.get("type").and_then(Value::as_str) {
            Some(kind @ ("function" | "custom")) => object
                .get(kind)
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&format!("tool_choice.{kind}.name"), "expected a string"))?,
            Some("allowed_tools") => return Ok(()),
            _ => {
                return Err(invalid(
                    "tool_choice.type",
                    "expected 'function', 'custom' or 'allowed_tools'",
                ));
            }
        },
        _ => {
            return Err(invalid(
                "tool_choice",
                "expected 'none', 'auto', 'required' or an object naming a tool",
            ));
        }
    };
    if tools.iter().any(|tool| tool == named) {
        Ok(())
    } else {
        Err(invalid(
            "tool_choice",
            format!("'{named}' is not one of the tools given"),
        ))
    }
}

/// Checks `response_format`: `text`, `json_object`, or `json_schema` with a name and a schema.
///
/// # Errors
/// Another type, a missing or bad name, or a schema over its limits.
pub fn check_response_format(format: &Value, limits: &LimitSettings) -> Result<(), ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text" | "json_object") => Ok(()),
        Some("json_schema") => {
            let Some(definition) = format.get("json_schema").and_then(Value::as_object) else {
                return Err(ApiError::invalid_with_code(
                    "Missing required parameter: 'response_format.json_schema'.",
                    "response_format.json_schema",
                    "missing_required_parameter",
                ));
            };
            let Some(name) = definition.get("name").and_then(Value::as_str) else {
                return Err(ApiError::invalid_with_code(
                    "Missing required parameter: 'response_format.json_schema.name'.",
                    "response_format.json_schema.name",
                    "missing_required_parameter",
                ));
            };
            check_name("response_format.json_schema.name", name)?;
            if let Some(strict) = definition.get("strict")
                && !strict.is_boolean()
            {
                return Err(invalid(
                    "response_format.json_schema.strict",
                    "expected a boolean",
                ));
            }
            match definition.get("schema") {
                Some(schema) => check_schema("response_format.json_schema.schema", schema, limits),
                None => Ok(()),
            }
        }
        Some(other) => Err(invalid(
            "response_format.type",
            format!("'{other}' is not one of 'text', 'json_object', 'json_schema'"),
        )),
        None => Err(invalid(
            "response_format",
            "expected an object with a 'type'",
        )),
    }
}

/// A JSON schema: an object, within the size and depth limits.
fn check_schema(at: &str, schema: &Value, limits: &LimitSettings) -> Result<(), ApiError> {
    let Value::Object(object) = schema else {
        return Err(invalid(at, "a JSON schema must be an object"));
    };
    let size = serde_json::to_vec(schema).map_or(usize::MAX, |bytes| bytes.len());
    if size > limits.max_schema_bytes {
        return Err(ApiError::invalid_with_code(
            format!(
                "Invalid '{at}': the schema is {size} bytes of JSON; the most is {} \
                 (CHATQ_MAX_SCHEMA_BYTES).",
                limits.max_schema_bytes
            ),
            at,
            "schema_too_large",
        ));
    }
    if depth(object) > MAX_SCHEMA_DEPTH {
        return Err(ApiError::invalid_with_code(
            format!("Invalid '{at}': the schema nests deeper than {MAX_SCHEMA_DEPTH} levels."),
            at,
            "schema_too_deep",
        ));
    }
    Ok(())
}

/// How deep objects and arrays nest, counting this object as 1. Iterative, so no input can
/// exhaust the stack.
fn depth(object: &Map<String, Value>) -> usize {
    let mut deepest = 1;
    let mut stack: Vec<(&Value, usize)> = object.values().map(|v| (v, 2)).collect();
    while let Some((value, level)) = stack.pop() {
        match value {
            Value::Object(inner) => {
                deepest = deepest.max(level);
                stack.extend(inner.values().map(|v| (v, level + 1)));
            }
            Value::Array(items) => {
                deepest = deepest.max(level);
                stack.extend(items.iter().map(|v| (v, level + 1)));
            }
            _ => {}
        }
    }
    deepest
}
