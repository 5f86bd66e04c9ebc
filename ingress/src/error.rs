//! One error type for every handler, answered in the OpenAI error shape:
//! `{"error":{"message":"…","type":"…","code":"…","param":"…"}}`.
//!
//! The status match is exhaustive, so a new variant cannot be added without deciding its status.
//! A 5xx never carries internal text: the cause chain is logged once, here, and the client gets a
//! generic message with the request id to quote.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why a request failed, as the client will be told.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or a value is out of range.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// 401: no key, or not a valid one.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a valid key without the right scope.
    #[error("{0}")]
    Forbidden(String),
    /// 404: nothing of that kind with that id for this tenant (or no such route).
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists with other methods.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the request body did not arrive within `body_read_timeout_secs`.
    #[error("the request body did not arrive within {} seconds", limit.as_secs())]
    RequestTimeout { limit: Duration },
    /// 409: the request conflicts with the current state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 413: the body is larger than `max_request_bytes`.
    #[error("the request body is larger than the {limit}-byte limit")]
    PayloadTooLarge { limit: usize },
    /// 413: one part of the request is over its own limit (inline media).
    #[error("{message}")]
    ContentTooLarge { message: String, param: String },
    /// 429: this key sent too many requests.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// 429: the tenant is at one of its quotas (`quota` names it: `queued_jobs`, …).
    #[error("{message}")]
    OverQuota {
        quota: &'static str,
        message: String,
        retry_after: Duration,
    },
    /// 503: the queue is full or a dependency is down; try again later.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: Duration,
    },
    /// 500: a bug or an unexpected failure. The source is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// 429 for a tenant at one of its quotas, naming it (as `param` too) and its limit.
    pub fn over_quota(over: chatq_common::db::quotas::OverQuota) -> Self {
        use chatq_common::db::quotas::Quota;
        let (what, retry_after) = match over.quota {
            Quota::QueuedJobs => ("jobs queued", 5),
            Quota::JobsInFlight => ("jobs running", 5),
            Quota::EventStreams => ("event streams open on this server", 5),
            Quota::Conversations => ("conversations stored", 60),
        };
        ApiError::OverQuota {
            quota: over.quota.as_str(),
            message: format!(
                "Your organization has {} {what}, its quota `{}`. Retry once some have finished (or, for conversations, delete some).",
                over.limit,
                over.quota.as_str()
            ),
            retry_after: Duration::from_secs(retry_after),
        }
    }

    pub fn invalid(message: impl Into<String>, param: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn invalid_with_code(
        message: impl Into<String>,
        param: impl Into<String>,
        code: &'static str,
    ) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: Some(code),
        }
    }

    pub fn not_found(kind: &str, id: impl std::fmt::Display) -> Self {
        ApiError::NotFound(format!("No {kind} found with id '{id}'."))
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(err.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } | ApiError::ContentTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RateLimited { .. } | ApiError::OverQuota { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::MethodNotAllowed(_)
            | ApiError::RequestTimeout { .. } => "invalid_request_error",
            ApiError::Unauthenticated(_) => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::Conflict { .. } => "conflict_error",
            ApiError::PayloadTooLarge { .. } | ApiError::ContentTooLarge { .. } => {
                "request_too_large"
            }
            ApiError::RateLimited { .. } | ApiError::OverQuota { .. } => "rate_limit_error",
            ApiError::Overloaded { .. } => "overloaded_error",
            ApiError::Internal(_) => "api_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::Unauthenticated(_) => Some("invalid_api_key"),
            ApiError::Conflict { code, .. } => Some(code),
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::RequestTimeout { .. } => Some("request_timeout"),
            ApiError::ContentTooLarge { .. } => Some("content_too_large"),
            ApiError::RateLimited { .. } => Some("rate_limit_exceeded"),
            ApiError::OverQuota { .. } => Some("quota_exceeded"),
            ApiError::Overloaded { .. } => Some("overloaded"),
            _ => None,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// What went wrong and, where it helps, what to do.
    pub message: String,
    /// The kind of error: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `conflict_error`, `request_too_large`, `rate_limit_error`,
    /// `overloaded_error`, `api_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A stable code for the error, when it has one (`invalid_api_key`, `rate_limit_exceeded`, …).
    pub code: Option<&'static str>,
    /// The request parameter at fault, when one is.
    pub param: Option<String>,
}

impl ErrorBody {
    /// The body as JSON, for answers written into files (a batch's error lines).
    pub fn to_value(&self) -> serde_json::Value {
        // Strings and options of them always serialize.
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl ApiError {
    /// The status and the OpenAI error body a client is answered with (a 5xx's cause is logged
    /// here, once, and not sent).
    pub fn status_and_body(&self) -> (StatusCode, ErrorBody) {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "request failed");
                "The server had an error while processing your request. Try again; if it keeps \
                 happening, report it with the x-request-id of this response."
                    .to_owned()
            }
            other => other.to_string(),
        };
        let param = match &self {
            ApiError::InvalidRequest { param, .. } => param.clone(),
            ApiError::ContentTooLarge { param, .. } => Some(param.clone()),
            ApiError::OverQuota { quota, .. } => Some((*quota).to_owned()),
            _ => None,
        };
        let error = ErrorDetail {
            message,
            kind: self.kind(),
            code: self.code(),
            param,
        };
        (status, ErrorBody { error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RequestTimeout { .. } = &self {
            // The rest of a trickling body is not worth waiting for: the connection ends here.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::RateLimited { retry_after, .. }
        | ApiError::OverQuota { retry_after, .. }
        | ApiError::Overloaded { retry_after, .. } = &self
        {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        // Postgres unreachable or out of connections is an outage the client can wait out.
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::error!(error = %err, "database unavailable");
                ApiError::Overloaded {
                    message: "The service is temporarily unavailable (its database cannot be reached). Try again shortly.".into(),
                    retry_after: Duration::from_secs(2),
                }
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;
