//! One line of a batch's input file: `{custom_id, method, url, body}`, checked the way OpenAI
//! checks it, with the body checked by chat completions' own validation
//! (`crate::chat_api::request`), so a line is accepted exactly when the same request sent to
//! `POST /v1/chat/completions` would be.

use std::collections::HashSet;

use chatq_common::job::JobRequest;
use serde_json::{Map, Value};

use crate::chat_api::ChatCompletionRequest;
use crate::error::ApiError;
use crate::extract::parse_json;
use crate::state::AppState;

/// The one endpoint batches run.
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";

/// Longest `custom_id`.
const MAX_CUSTOM_ID_CHARS: usize = 512;

/// A line that is well formed.
#[derive(Debug)]
pub enum CheckedLine {
    /// A request to run.
    Run {
        custom_id: String,
        model: String,
        request: JobRequest,
    },
    /// A request chat completions would refuse: answered in the error file with the error that
    /// request would have got, never run.
    Refused { custom_id: String, error: ApiError },
}

/// A line that is not a batch request at all: the batch fails validation and reports it, as
/// OpenAI does, in `errors.data` with the line's number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl LineError {
    fn new(code: &'static str, param: Option<&'static str>, message: impl Into<String>) -> Self {
        LineError {
            code,
            message: message.into(),
            param,
        }
    }
}

/// Checks one line. `seen` holds the custom ids of the lines before it.
///
/// # Errors
/// The line is not valid JSON, or lacks (or repeats) what every batch line needs.
pub fn check(
    text: &[u8],
    seen: &mut HashSet<String>,
    state: &AppState,
) -> Result<CheckedLine, LineError> {
    let Ok(Value::Object(mut line)) = serde_json::from_slice::<Value>(text) else {
        return Err(LineError::new(
            "invalid_json_line",
            None,
            "This line is not a valid JSON object.",
        ));
    };
    let custom_id = match line.remove("custom_id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        Some(_) | None => {
            return Err(LineError::new(
                "missing_required_parameter",
                Some("custom_id"),
                "Each line needs a 'custom_id': a non-empty string.",
            ));
        }
    };
    if custom_id.chars().count() > MAX_CUSTOM_ID_CHARS {
        return Err(LineError::new(
            "invalid_value",
            Some("custom_id"),
            format!("'custom_id' is longer than {MAX_CUSTOM_ID_CHARS} characters."),
        ));
    }
    if line.get("method").and_then(Value::as_str) != Some("POST") {
        return Err(LineError::new(
            "invalid_method",
            Some("method"),
            "'method' must be 'POST'.",
        ));
    }
    if line.get("url").and_then(Value::as_str) != Some(CHAT_COMPLETIONS) {
        return Err(LineError::new(
            "invalid_url",
            Some("url"),
            format!("'url' must be '{CHAT_COMPLETIONS}', the batch's endpoint."),
        ));
    }
    let Some(body @ Value::Object(_)) = line.remove("body") else {
        return Err(LineError::new(
            "missing_required_parameter",
            Some("body"),
            "Each line needs a 'body': the chat completions request, as a JSON object.",
        ));
    };
    if !seen.insert(custom_id.clone()) {
        return Err(LineError::new(
            "duplicate_custom_id",
            Some("custom_id"),
            format!("The custom_id '{custom_id}' is used by an earlier line; each must be unique."),
        ));
    }
    Ok(match completion_request(&body, state) {
        Ok((model, request)) => CheckedLine::Run {
            custom_id,
            model,
            request,
        },
        Err(error) => CheckedLine::Refused { custom_id, error },
    })
}

/// The body, checked as `POST /v1/chat/completions` checks it, as the job it becomes.
fn completion_request(body: &Value, state: &AppState) -> Result<(String, JobRequest), ApiError> {
    // Read as the endpoint reads a body: typed, and as sent (to be passed on whole).
    let bytes = serde_json::to_vec(body).map_err(ApiError::internal)?;
    let typed: ChatCompletionRequest = parse_json(&bytes)?;
    let sent: Map<String, Value> = parse_json(&bytes)?;
    let request = typed.validate(sent, &state.limits, state.unknown_parameters)?;
    if request.stream {
        return Err(ApiError::invalid_with_code(
            "Invalid 'stream': a batch request cannot stream; its answer goes to the output file.",
            "stream",
            "unsupported_value",
        ));
    }
    let model = request.params.model.clone();
    crate::routes::models::ensure_offered(state, &model)?;
    Ok((
        model,
        JobRequest::ChatCompletion {
            params: request.params,
            body: Some(request.body),
            messages: Vec::new(),
        },
    ))
}
