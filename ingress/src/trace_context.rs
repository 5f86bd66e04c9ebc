//! One trace per request: the trace a client names in `traceparent`, or a new one.
//!
//! [`begin`] gives each request its [`TraceContext`] (the client's trace, if its `traceparent` is
//! valid, with a parent id of this request's own) and answers with it in the `traceparent`
//! response header, so a client can find its request in the logs. [`request_span`] puts the trace
//! id in the `request` span, so every line logged while the request is handled carries it. A
//! handler that creates a job takes the context with [`RequestTrace`] and records it on the job,
//! which is published with it: the worker's lines for the job carry the same trace id.
//!
//! The `request` span is at INFO, unlike the step spans below it (DEBUG), so that warnings and
//! errors carry the trace id at the default log level.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use chatq_common::trace::{TRACEPARENT, TraceContext};
use tracing::field;

/// The trace of the request being handled.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace(pub TraceContext);

/// Middleware: gives the request its trace (see the module documentation) and answers with it.
pub async fn begin(mut request: Request, next: Next) -> Response {
    let incoming = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    let trace = TraceContext::continue_or_start(incoming);
    request.extensions_mut().insert(RequestTrace(trace));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
        response.headers_mut().insert(TRACEPARENT, value);
    }
    response
}

/// The span a request is handled in, with the trace [`begin`] gave it.
pub fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let trace_id = request
        .extensions()
        .get::<RequestTrace>()
        .map(|trace| field::display(trace.0.trace_id()));
    // `trace_id` is chatq_common::telemetry::TRACE_ID, which JSON lines lift to the top level.
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
        trace_id,
    )
}

/// Handlers take the request's trace with this. A request that did not pass through [`begin`]
/// (not one the router serves) gets a new trace.
impl<S: Send + Sync> FromRequestParts<S> for RequestTrace {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<RequestTrace>()
            .copied()
            .unwrap_or_else(|| RequestTrace(TraceContext::new_root())))
    }
}
