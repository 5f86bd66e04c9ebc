//! The Response object (`"object": "response"`), built from the stored response and its job.
//!
//! A job's status becomes the response's: `queued`, `running` → `in_progress`, `succeeded` →
//! `completed` (or `incomplete` when the reply stopped at `max_output_tokens`), `failed` and
//! `expired` → `failed`, `cancelled`. The output is one assistant message whose id derives from
//! the response's, so every reader (a poll, a stream, a resumed stream) names it the same.

use chatq_common::chat::Usage;
use chatq_common::db::responses::ResponseRow;
use chatq_common::events::JobView;
use chatq_common::job::JobStatus;
use serde_json::{Value, json};

/// The id of the response's output message.
pub fn output_item_id(row: &ResponseRow) -> String {
    format!("msg_{}", row.id.as_uuid().simple())
}

/// The response's status for a job's.
pub fn status_of(job: &JobView) -> &'static str {
    match job.status {
        JobStatus::Queued => "queued",
        JobStatus::Running => "in_progress",
        JobStatus::Succeeded if stopped_at_limit(job) => "incomplete",
        JobStatus::Succeeded => "completed",
        JobStatus::Cancelled => "cancelled",
        JobStatus::Failed | JobStatus::Expired => "failed",
    }
}

fn stopped_at_limit(job: &JobView) -> bool {
    job.reply
        .as_ref()
        .and_then(|r| r.finish_reason.as_deref())
        .is_some_and(|reason| reason == "length")
}

/// The output text of a finished job.
pub fn output_text(job: &JobView) -> Option<&str> {
    job.reply.as_ref().map(|reply| reply.content.as_str())
}

/// The output message item, `status` as given.
pub fn message_item(row: &ResponseRow, text: Option<&str>, status: &str) -> Value {
    let content = match text {
        Some(text) => vec![output_part(text)],
        None => Vec::new(),
    };
    json!({
        "id": output_item_id(row),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    })
}

pub fn output_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn usage(usage: &Usage) -> Value {
    let cached = usage
        .prompt_tokens_details
        .as_ref()
        .map_or(0, |d| d.cached_tokens);
    let reasoning = serde_json::to_value(usage.completion_tokens_details)
        .ok()
        .and_then(|d| d.get("reasoning_tokens").and_then(Value::as_u64))
        .unwrap_or(0);
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.total_tokens,
    })
}

/// The Response object for `job` as it stands, with its status `status` (the job's own, or an
/// earlier one when a stream replays how the response began).
pub fn response_json(row: &ResponseRow, job: &JobView, status: &str) -> Value {
    let finished = matches!(status, "completed" | "incomplete");
    let output = if finished {
        let item_status = if status == "incomplete" {
            "incomplete"
        } else {
            "completed"
        };
        vec![message_item(row, output_text(job), item_status)]
    } else {
        Vec::new()
    };
    let error = (status == "failed").then(|| {
        let message = job
            .error
            .as_ref()
            .map_or("the response failed", |e| e.message.as_str());
        json!({"code": "server_error", "message": message})
    });
    let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
    let model = job
        .reply
        .as_ref()
        .and_then(|r| r.model.clone())
        .unwrap_or_else(|| job.model.clone());
    json!({
        "id": row.id.to_string(),
        "object": "response",
        "created_at": row.created_at.unix_timestamp(),
        "status": status,
        "background": row.background,
        "completed_at": if finished { job.finished_at } else { None },
        "error": error,
        "incomplete_details": incomplete,
        "instructions": row.instructions,
        "max_output_tokens": row.max_output_tokens,
        "metadata": row.metadata,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": row.previous.map(|p| p.to_string()),
        "reasoning": {"effort": null, "summary": null},
        "store": row.store,
        "temperature": row.temperature.unwrap_or(1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": row.top_p.unwrap_or(1.0),
        "truncation": "disabled",
        "usage": if finished { job.reply.as_ref().and_then(|r| r.usage.as_ref()).map(usage) } else { None },
        "user": null,
    })
}
