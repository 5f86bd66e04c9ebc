//! Extractors that turn every kind of bad input into a clear 4xx in the OpenAI shape, naming the
//! offending parameter where there is one.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use chatq_common::ids::InvalidId;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body. Unlike `axum::Json` it does not insist on a `Content-Type` header (curl's `-d`
/// sends a form type), and its errors say which field was wrong and how.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A JSON object body read twice: as `T`, the fields chatq checks, and as sent, to be passed on
/// without losing a field `T` does not name.
#[derive(Debug)]
pub struct JsonBodyAsSent<T>(pub T, pub serde_json::Map<String, serde_json::Value>);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBodyAsSent<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        let typed = parse_json(&bytes)?;
        let sent = parse_json(&bytes)?;
        Ok(JsonBodyAsSent(typed, sent))
    }
}

/// A JSON body for a request whose fields are all optional: an empty body stands for `{}`.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

/// The whole body, within `max_request_bytes` (413 in the OpenAI shape above it).
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|rejection| body_rejection(rejection, state.limits.max_request_bytes))
}

/// Parses JSON, reporting the path of a field of the wrong type as `param`. Text anywhere in it
/// must be storable: a NUL character is refused here, for every body.
///
/// # Errors
/// 400 with what was wrong and where.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest {
            message: "The request body is empty; send a JSON object.".into(),
            param: None,
            code: Some("invalid_json"),
        });
    }
    crate::validate::refuse_nul(bytes)?;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    match result {
        // Anything after the value makes the body malformed, not a value with extras ignored.
        Ok(value) => match deserializer.end() {
            Ok(()) => Ok(value),
            Err(trailing) => Err(ApiError::InvalidRequest {
                message: format!(
                    "The request body is not valid JSON: {}.",
                    strip_position(&trailing.to_string())
                ),
                param: None,
                code: Some("invalid_json"),
            }),
        },
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::InvalidRequest {
                    message: format!("The request body is not valid JSON: {inner}."),
                    param: None,
                    code: Some("invalid_json"),
                })
            } else {
                let text = inner.to_string();
                let param = (path != ".")
                    .then_some(path)
                    .or_else(|| field_named_in(&text));
                let message = match &param {
                    Some(param) => {
                        format!("Invalid '{param}': {}.", strip_position(&inner.to_string()))
                    }
                    None => format!(
                        "Invalid request body: {}.",
                        strip_position(&inner.to_string())
                    ),
                };
                Err(ApiError::InvalidRequest {
                    message,
                    param,
                    code: Some("invalid_value"),
                })
            }
        }
    }
}

/// The field a "missing field `x`", "unknown field `x`" or "duplicate field `x`" message is about.
fn field_named_in(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))
        .or_else(|| message.strip_prefix("duplicate field `"))?;
    rest.split('`').next().map(str::to_owned)
}

/// serde_json appends " at line 1 column 12"; that helps nobody reading a one-line body.
fn strip_position(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

fn body_rejection(rejection: BytesRejection, limit: usize) -> ApiError {
    match rejection {
        BytesRejection::FailedToBufferBody(failed) => {
            if matches!(
                failed,
                axum::extract::rejection::FailedToBufferBody::LengthLimitError(_)
            ) {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::InvalidRequest {
                    message: "The request body could not be read.".into(),
                    param: None,
                    code: None,
                }
            }
        }
        other => ApiError::InvalidRequest {
            message: other.body_text(),
            param: None,
            code: None,
        },
    }
}

/// Query parameters, with a 400 that names the bad one.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| QueryParams(value))
            .map_err(|rejection: QueryRejection| {
                let text = rejection.body_text();
                let problem = text.trim_start_matches("Failed to deserialize query string: ");
                ApiError::InvalidRequest {
                    message: format!("Invalid query string: {problem}."),
                    param: query_param_named_in(problem),
                    code: Some("invalid_value"),
                }
            })
    }
}

/// The parameter a query-string error is about. axum reports the path of the field that failed
/// ahead of the problem (`limit: invalid digit found in string`), as `serde_path_to_error` words
/// it; a problem with the whole query (`duplicate field `limit``) names the field itself.
fn query_param_named_in(problem: &str) -> Option<String> {
    let from_path = problem.split_once(": ").and_then(|(path, _)| {
        let is_name = !path.is_empty()
            && path != "."
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        is_name.then(|| path.to_owned())
    });
    from_path.or_else(|| field_named_in(problem))
}

/// A typed id from the path (`/v1/conversations/{id}`), with a 400 for a malformed one, so a typo
/// is told apart from an id that does not exist.
#[derive(Debug)]
pub struct IdPath<T>(pub T);

impl<T, S> FromRequestParts<S> for IdPath<T>
where
    T: FromStr<Err = InvalidId> + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidRequest {
                message: rejection.body_text(),
                param: None,
                code: None,
            })?;
        raw.parse::<T>().map(IdPath).map_err(|err| {
            ApiError::invalid_with_code(format!("Invalid id: {err}."), "id", "invalid_id")
        })
    }
}
