//! Request bodies over `max_request_bytes` get their 413, whatever the client's connection.
//!
//! A server that answers before it has read a request's body, and then closes the connection,
//! leaves the client still writing: the kernel answers the unread bytes with a reset, and a client
//! that writes its whole request before it reads (httpx, the OpenAI SDK) sees "server disconnected
//! without sending a response" instead of the 413. So the body is read here, before any handler:
//! one within the limit is handed on whole; one over it is read on and thrown away, up to
//! [`DRAIN_FACTOR`] times the limit, and then answered with 413 and `Connection: close`, which the
//! client, done writing, reads. (A body larger still is cut off: reading it all would let a client
//! make the server read as much as it likes.)
//!
//! Reading and draining together must end within `body_read_timeout_secs`; a body that trickles
//! in slower is answered with 408 and `Connection: close`, so a client cannot hold a request
//! open by sending its body a byte at a time.

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::error::ApiError;

/// How much of an oversized body is read and discarded before the 413, as a multiple of the
/// limit.
const DRAIN_FACTOR: usize = 8;

/// `POST` here uploads a file.
const UPLOAD_PATH: &str = "/v1/files";

/// What the middleware holds a body to.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `max_request_bytes`.
    pub max_bytes: usize,
    /// `body_read_timeout_secs`.
    pub read_timeout: Duration,
}

/// The middleware: see the module documentation.
pub async fn limit_body(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    // A file upload is streamed to storage, under its own limit (`crate::files::upload`).
    let is_upload = parts.method == Method::POST && parts.uri.path() == UPLOAD_PATH;
    if is_upload || body.size_hint().exact() == Some(0) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let read = tokio::time::timeout(
        limits.read_timeout,
        read_or_refuse(&parts, body, limits.max_bytes),
    );
    match read.await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(refused)) => refused,
        Err(_) => ApiError::RequestTimeout {
            limit: limits.read_timeout,
        }
        .into_response(),
    }
}

/// The whole body, or the answer that refuses it.
async fn read_or_refuse(
    parts: &axum::http::request::Parts,
    body: Body,
    limit: usize,
) -> Result<Bytes, Response> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        drain(body, limit.saturating_mul(DRAIN_FACTOR)).await;
        return Err(too_large(limit));
    }
    match read_within(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(Oversized(rest)) => {
            drain(rest, limit.saturating_mul(DRAIN_FACTOR)).await;
            Err(too_large(limit))
        }
        // The client went away or sent a broken body: nobody is left to read an answer, but
        // one is due.
        Err(Broken) => Err(ApiError::InvalidRequest {
            message: "The request body could not be read.".into(),
            param: None,
            code: Some("invalid_body"),
        }
        .into_response()),
    }
}

enum ReadError {
    /// Over the limit; the body, to read on from.
    Oversized(Body),
    Broken,
}
use ReadError::{Broken, Oversized};

/// Reads the whole body if it is at most `limit` bytes.
async fn read_within(mut body: Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(Broken) };
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > limit {
                return Err(Oversized(body));
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(read))
}

/// Reads and discards up to `cap` bytes of what is left of a body.
async fn drain(mut body: Body, cap: usize) {
    let mut drained = 0;
    while drained < cap {
        match body.frame().await {
            Some(Ok(frame)) => drained += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => return,
        }
    }
}

/// 413 in the OpenAI shape, closing the connection: what is left of the body is not read.
fn too_large(limit: usize) -> Response {
    let mut response = ApiError::PayloadTooLarge { limit }.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
