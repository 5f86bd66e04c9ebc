//! The chat completion response shapes: the whole completion, and the chunks of a streamed one.

use std::time::Duration;

use chatq_common::chat::Usage;
use chatq_common::events::JobView;
use chatq_common::job::JobStatus;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;

/// `chatcmpl-…`: the id of a completion, derived from its job.
pub fn completion_id(job: chatq_common::ids::JobId) -> String {
    format!("chatcmpl-{}", job.as_uuid().simple())
}

/// The non-streaming response.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Value>,
    pub usage: Option<Usage>,
    pub system_fingerprint: Option<String>,
}

impl ChatCompletion {
    pub fn new(
        id: String,
        created: i64,
        model: String,
        content: String,
        finish_reason: String,
        usage: Option<Usage>,
    ) -> Self {
        Self {
            id,
            object: "chat.completion",
            created,
            model,
            choices: vec![json!({
                "index": 0,
                "message": { "role": "assistant", "content": content, "refusal": null },
                "logprobs": null,
                "finish_reason": finish_reason,
            })],
            usage,
            system_fingerprint: None,
        }
    }
}

/// Builds the chunks of one streamed completion.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    pub id: String,
    pub created: i64,
    pub model: String,
    pub include_usage: bool,
}

impl ChunkWriter {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk.to_string()
    }

    /// The first chunk: the assistant role, no content yet.
    pub fn role(&self) -> String {
        self.chunk(
            json!([{ "index": 0, "delta": { "role": "assistant", "content": "", "refusal": null }, "logprobs": null, "finish_reason": null }]),
            None,
        )
    }

    pub fn content(&self, text: &str) -> String {
        self.chunk(
            json!([{ "index": 0, "delta": { "content": text }, "logprobs": null, "finish_reason": null }]),
            None,
        )
    }

    pub fn finish(&self, finish_reason: &str) -> String {
        self.chunk(
            json!([{ "index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason }]),
            None,
        )
    }

    /// The last chunk when `stream_options.include_usage` is set: no choices, the usage.
    pub fn usage(&self, usage: Usage) -> String {
        self.chunk(json!([]), Some(json!(usage)))
    }
}

/// An error in the middle of a stream, as OpenAI sends it: a `data:` line with an `error` object.
pub fn stream_error(kind: &str, code: &str, message: &str) -> String {
    json!({ "error": { "message": message, "type": kind, "code": code, "param": null } })
        .to_string()
}

impl ChatCompletion {
    /// The answer to a non-streaming request, from the job as it ended (or as it stands when the
    /// wait ran out).
    ///
    /// # Errors
    /// The job ended without a reply: the HTTP error that says why.
    pub fn from_job(job: JobView, writer: ChunkWriter) -> Result<Self, ApiError> {
        match (job.status, job.reply) {
            (JobStatus::Succeeded, Some(reply)) => Ok(ChatCompletion::new(
                writer.id,
                writer.created,
                reply.model.unwrap_or(writer.model),
                reply.content,
                reply.finish_reason.unwrap_or_else(|| "stop".into()),
                reply.usage,
            )),
            (status, _) => Err(job_error(status, job.error.as_ref())),
        }
    }
}

/// The HTTP error for a job that ended without a reply (or has not ended yet).
fn job_error(status: JobStatus, error: Option<&chatq_common::job::view::JobErrorView>) -> ApiError {
    let message = error.map_or("the job ended without a reply", |e| e.message.as_str());
    match (status, error.map(|e| e.kind.as_str())) {
        (JobStatus::Failed, Some("provider_rejected")) => ApiError::InvalidRequest {
            message: format!("The model provider rejected the request: {message}"),
            param: None,
            code: Some("provider_rejected"),
        },
        (JobStatus::Cancelled, _) => ApiError::Conflict {
            code: "job_cancelled",
            message: "The request was cancelled before it finished.".into(),
        },
        (JobStatus::Queued | JobStatus::Running, _) => ApiError::Overloaded {
            message: "The reply did not finish in time. Try again later.".into(),
            retry_after: Duration::from_secs(5),
        },
        _ => ApiError::Overloaded {
            message: format!("The model provider could not answer: {message}"),
            retry_after: Duration::from_secs(1),
        },
    }
}
