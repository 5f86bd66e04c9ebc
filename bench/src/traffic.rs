//! The requests the scenarios send to chatq, built before the clock starts: a chat message to
//! each of many conversations (closed loop for throughput, open loop at a rate), new
//! conversations, and chat completions, streamed or not, each with a prompt of its own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hyper::{Method, Uri};
use uuid::Uuid;

use super::load::{Load, Requests};
use super::openloop::{OpenLoop, Planned, Read};
use super::stack::{MODEL, Stack};

/// The message every request sends: a typical short chat turn.
pub const MESSAGE: &str = r#"{"content":"Summarise the plot of Moby-Dick in three sentences, for a reader who has not read it."}"#;

/// A load sending [`MESSAGE`] once to each conversation.
pub fn send_messages(
    label: &str,
    stack: &Stack,
    conversations: &[Uuid],
    connections: usize,
) -> anyhow::Result<Load> {
    let paths = conversations
        .iter()
        .map(|id| {
            let id = chatq_common::ids::ConversationId::from_uuid(*id);
            Uri::try_from(format!("/v1/conversations/{id}/messages"))
                .context("a conversation path is not a valid URI")
        })
        .collect::<anyhow::Result<Vec<Uri>>>()?;
    Ok(Load {
        label: label.into(),
        target: stack.ingress,
        method: Method::POST,
        requests: Requests::EachOnce(Arc::from(paths)),
        body: Bytes::from_static(MESSAGE.as_bytes()),
        api_key: Some(stack.api_key.clone()),
        connections,
    })
}

/// One message to each conversation, due at `rate` per second.
pub fn messages_load(
    label: &str,
    stack: &Stack,
    conversations: &[Uuid],
    rate: f64,
    connections: usize,
) -> OpenLoop {
    let body = Bytes::from_static(MESSAGE.as_bytes());
    let requests = conversations
        .iter()
        .filter_map(|id| {
            let id = chatq_common::ids::ConversationId::from_uuid(*id);
            let path = Uri::try_from(format!("/v1/conversations/{id}/messages")).ok()?;
            Some(Planned {
                method: Method::POST,
                path,
                body: body.clone(),
            })
        })
        .collect();
    OpenLoop {
        label: label.into(),
        target: stack.ingress,
        rate,
        requests,
        api_key: Some(stack.api_key.clone()),
        warm_connections: connections.min(256),
        max_connections: connections,
        read: Read::Whole,
        capture_header: None,
        timeout: Duration::from_secs(120),
        progress: true,
    }
}

/// `count` new conversations (`POST /v1/conversations`), due at `rate` per second.
pub fn conversations_load(label: &str, stack: &Stack, count: usize, rate: f64) -> OpenLoop {
    let planned = Planned {
        method: Method::POST,
        path: Uri::from_static("/v1/conversations"),
        body: Bytes::from_static(br#"{"title":"A new chat"}"#),
    };
    OpenLoop {
        label: label.into(),
        target: stack.ingress,
        rate,
        requests: vec![planned; count],
        api_key: Some(stack.api_key.clone()),
        warm_connections: (rate / 5.0).ceil().clamp(1.0, 256.0) as usize,
        max_connections: 1_024,
        read: Read::Whole,
        capture_header: None,
        timeout: Duration::from_secs(60),
        progress: true,
    }
}

/// What the provider answers a planned completion with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Text,
    /// A tool is offered: the mock answers with a call of it, its arguments streamed in pieces.
    ToolCall,
}

/// `count` chat completion requests, each with a prompt of its own.
pub fn chat_completions(count: usize, stream: bool, answer: Answer) -> Vec<Planned> {
    (0..count)
        .map(|index| {
            let mut body = serde_json::json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": format!(
                    "Request {index}: summarise the plot of Moby-Dick in three sentences."
                )}],
                "stream": stream,
            });
            if answer == Answer::ToolCall {
                body["tools"] = serde_json::json!([{
                    "type": "function",
                    "function": {
                        "name": "save_summary",
                        "parameters": {"type": "object", "properties": {
                            "title": {"type": "string"},
                            "summary": {"type": "string"},
                            "sentences": {"type": "integer"}
                        }}
                    }
                }]);
            }
            Planned {
                method: Method::POST,
                path: Uri::from_static("/v1/chat/completions"),
                body: Bytes::from(body.to_string()),
            }
        })
        .collect()
}

/// An open-loop load of chat completions at `rate` for `seconds`.
pub fn completions_load(
    label: &str,
    stack: &Stack,
    target: std::net::SocketAddr,
    rate: f64,
    seconds: f64,
    stream: bool,
    answer: Answer,
) -> OpenLoop {
    let count = (rate * seconds).round().max(1.0) as usize;
    OpenLoop {
        label: label.into(),
        target,
        rate,
        requests: chat_completions(count, stream, answer),
        api_key: Some(stack.api_key.clone()),
        warm_connections: (rate / 5.0).ceil().clamp(4.0, 256.0) as usize,
        max_connections: 4_096,
        read: if stream {
            Read::FirstContent
        } else {
            Read::Whole
        },
        capture_header: Some("x-chatq-job-id"),
        timeout: Duration::from_secs(60),
        progress: true,
    }
}

/// The job ids of `x-chatq-job-id` headers, as UUIDs.
pub fn job_ids<'a>(headers: impl Iterator<Item = &'a str>) -> Vec<Uuid> {
    headers
        .filter_map(|text| text.parse::<chatq_common::ids::JobId>().ok())
        .map(|id| id.as_uuid())
        .collect()
}
