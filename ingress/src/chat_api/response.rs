//! The chat completion response shapes: the whole completion, and the chunks of a streamed one.

use std::time::Duration;

use chatq_common::chat::Usage;
use chatq_common::choices::{AssistantMessage, Choice, ChoiceDelta};
use chatq_common::events::JobView;
use chatq_common::job::JobStatus;
use chatq_common::job::view::ReplyView;
use serde::Serialize;
use serde_json::{Map, Value, json};

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

/// A choice as the API answers it: the stored choice with the message's `role`.
fn choice_json(choice: &Choice) -> Value {
    let mut value = json!(choice);
    value["message"]["role"] = json!("assistant");
    value
}

/// The choices of a finished job: as stored for a chat completion, or its text reply as choice 0
/// (a job recorded before choices were stored).
fn choices_of(reply: &ReplyView) -> Vec<Choice> {
    if !reply.choices.is_empty() {
        return reply.choices.clone();
    }
    vec![Choice {
        index: 0,
        message: AssistantMessage {
            content: Some(reply.content.clone()),
            ..AssistantMessage::default()
        },
        finish_reason: reply.finish_reason.clone().unwrap_or_else(|| "stop".into()),
        logprobs: None,
    }]
}

/// Builds the chunks of one streamed completion.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    pub id: String,
    pub created: i64,
    pub model: String,
    pub include_usage: bool,
    /// Choices asked for: each gets its role chunk first.
    pub choices: u32,
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

    /// The first chunks: the assistant role of each choice, no content yet.
    pub fn roles(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.choices.max(1)).map(|index| {
            self.chunk(
                json!([{ "index": index, "delta": { "role": "assistant", "content": "", "refusal": null }, "logprobs": null, "finish_reason": null }]),
                None,
            )
        })
    }

    /// A piece of one choice, in the OpenAI chunk shape.
    pub fn delta(&self, delta: &ChoiceDelta) -> String {
        let mut body = Map::new();
        if !delta.text.is_empty() {
            body.insert("content".into(), json!(delta.text));
        }
        if !delta.tool_calls.is_empty() {
            body.insert("tool_calls".into(), json!(delta.tool_calls));
        }
        if let Some(refusal) = &delta.refusal {
            body.insert("refusal".into(), json!(refusal));
        }
        if let Some(reasoning) = &delta.reasoning_content {
            body.insert("reasoning_content".into(), json!(reasoning));
        }
        self.chunk(
            json!([{ "index": delta.index, "delta": body, "logprobs": delta.logprobs, "finish_reason": null }]),
            None,
        )
    }

    /// The last chunk of one choice: how it ended.
    pub fn finish(&self, index: u32, finish_reason: &str) -> String {
        self.chunk(
            json!([{ "index": index, "delta": {}, "logprobs": null, "finish_reason": finish_reason }]),
            None,
        )
    }

    /// The chunks that end a reply: each choice's finish, then the usage when asked for.
    pub fn ending(&self, reply: &ReplyView) -> Vec<String> {
        let mut chunks: Vec<String> = choices_of(reply)
            .iter()
            .map(|choice| self.finish(choice.index, &choice.finish_reason))
            .collect();
        if self.include_usage
            && let Some(usage) = reply.usage
        {
            chunks.push(self.usage(usage));
        }
        chunks
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
            (JobStatus::Succeeded, Some(reply)) => Ok(ChatCompletion {
                id: writer.id,
                object: "chat.completion",
                created: writer.created,
                choices: choices_of(&reply).iter().map(choice_json).collect(),
                model: reply.model.unwrap_or(writer.model),
                usage: reply.usage,
                system_fingerprint: None,
            }),
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
