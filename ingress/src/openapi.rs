//! `GET /openapi.json`: the API as an OpenAPI 3.1 document, generated from the code. Each handler
//! carries its own `#[utoipa::path]` (method, path, parameters, body, answers) and the router
//! collects them as it mounts the handlers (`routes::router`), so no route is served without
//! being documented; the shapes come from the request and response types themselves.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response as Answer};
use utoipa::{IntoResponses, Modify, OpenApi};

use chatq_common::ids::{BatchId, ConversationId, FileId, JobId, MessageId, ResponseId, WebhookId};

use crate::error::ErrorBody;

/// One server-sent event of a `text/event-stream` answer, as a client's parser hands it over:
/// OpenAPI 3.1 has the schema of an event stream describe each event (3.2's `itemSchema`), not
/// the stream as one string.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "only the document reads it")]
pub struct ServerSentEvent {
    /// The event's type (`message.delta`, `response.output_text.delta`, …); none for the
    /// chat completions chunks, which are told apart by their data.
    pub event: Option<String>,
    /// The event's JSON, or `[DONE]` at the end of a chat completions stream.
    pub data: String,
    /// Where a resumed stream goes on from (`Last-Event-ID`, `starting_after`).
    pub id: Option<String>,
}

/// The document's frame: what the paths and schemas collected from the handlers go into.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatq",
        description = "A queue-backed AI chat backend: conversations and jobs, OpenAI-compatible \
                       chat completions, files, batches and the Responses API. Every `/v1` \
                       operation needs `Authorization: Bearer <key>`; errors are answered in the \
                       OpenAI error shape.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    // The ids a path names are components too, as the bodies that carry them make them.
    components(schemas(
        ErrorBody, ServerSentEvent, ConversationId, MessageId, JobId, FileId, BatchId,
        ResponseId, WebhookId
    )),
    modifiers(&BearerKey),
    security(("api_key" = [])),
    tags(
        (name = "conversations", description = "Conversations, their messages and the jobs that answer them."),
        (name = "jobs", description = "One request to the provider: its state, its events, cancelling it."),
        (name = "chat", description = "OpenAI-compatible chat completions and models."),
        (name = "responses", description = "The Responses API in background mode."),
        (name = "batches", description = "Files and batches, with OpenAI Batch semantics."),
        (name = "webhooks", description = "Endpoints called when a job, response or batch ends, signed the Standard Webhooks way."),
        (name = "admin", description = "Dead letters (tenant admins) and the fleet (operators)."),
        (name = "operations", description = "Health, readiness, metrics, this document and the web page."),
    )
)]
pub struct ApiDoc;

/// The API key scheme every `/v1` operation names.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key made by `chatq keys create`."))
                    .build(),
            ),
        );
    }
}

/// The error answers any `/v1` operation may give (which ones a request meets depends on its
/// input, its key and the state of the queue), each in the OpenAI error shape.
pub struct ApiErrors;

impl IntoResponses for ApiErrors {
    fn responses() -> BTreeMap<String, RefOr<Answer>> {
        [
            (
                "400",
                "The request is malformed or a value is out of range; `param` names it.",
                false,
            ),
            ("401", "No API key, or not a valid one.", false),
            (
                "403",
                "The key lacks the scope this operation needs.",
                false,
            ),
            (
                "404",
                "Nothing of that kind with that id for this tenant.",
                false,
            ),
            ("405", "The path exists with other methods.", false),
            ("408", "The request body did not arrive in time.", false),
            (
                "409",
                "The request conflicts with the current state.",
                false,
            ),
            (
                "413",
                "The body, or a part of it, is over its limit.",
                false,
            ),
            (
                "429",
                "Too many requests for this key; wait `Retry-After` seconds.",
                true,
            ),
            (
                "503",
                "The queue is full or a dependency is down; wait `Retry-After` seconds.",
                true,
            ),
        ]
        .into_iter()
        .map(|(status, description, retry_after)| {
            (status.to_owned(), error_response(description, retry_after))
        })
        .collect()
    }
}

fn error_response(description: &str, retry_after: bool) -> RefOr<Answer> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("Seconds to wait before trying again."))
                .build(),
        );
    }
    response.build().into()
}

/// The document as served: rendered once, when the router is built.
#[derive(Clone)]
pub struct Document(Arc<str>);

impl Document {
    pub fn render(document: &utoipa::openapi::OpenApi) -> Self {
        // The document is made of strings, maps and numbers: it always serializes.
        Self(document.to_pretty_json().unwrap_or_default().into())
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "This document: OpenAPI 3.1.", body = Object)))]
pub async fn document(Extension(document): Extension<Document>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.to_string(),
    )
        .into_response()
}
