//! A cached reply, and playing it back as a stream, so a hit reaches clients through the same
//! deltas and terminal event as a reply read from the provider.

use chatq_common::chat::Usage;
use std::mem::size_of;

use chatq_common::choices::{Choice, ChoiceDelta, FunctionCallDelta, ToolCall, ToolCallDelta};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::call::Reply;
use crate::memory;
use crate::provider::{ReplyStream, StreamItem};

/// Most delta events one choice's content is played back in.
const MAX_PIECES: usize = 64;
/// Fewest characters in a played-back piece (a word, at least).
const MIN_PIECE_CHARS: usize = 16;
/// How many times the length of its JSON text a `logprobs` value takes in memory (measured by
/// `workers/tests/cache_memory.rs`, rounded up).
const LOGPROBS_FACTOR: usize = 20;

/// What the cache keeps of a reply: every choice, the usage and the model that answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedReply {
    pub choices: Vec<Choice>,
    pub usage: Usage,
    pub model: String,
}

impl CachedReply {
    pub fn of(reply: &Reply) -> Self {
        Self {
            choices: reply.choices.clone(),
            usage: reply.usage,
            model: reply.model.clone(),
        }
    }

    /// The memory the entry takes in the memory tier: the reply behind its `Arc`, its choices
    /// with their text, and the cache's own entry.
    pub fn weight(&self) -> u32 {
        let choices: usize = self.choices.iter().map(choice_bytes).sum();
        memory::weight(
            memory::CACHE_ENTRY
                + memory::allocation(2 * size_of::<usize>() + size_of::<Self>())
                + memory::allocation(self.choices.capacity() * size_of::<Choice>())
                + choices
                + memory::string(&self.model),
        )
    }

    /// The reply as the stream a provider would have sent: each choice's reasoning, content (in
    /// pieces at word boundaries), refusal and tool calls, then the end with usage and model. Each
    /// item is handed out on its own turn of the executor, so the relay publishes pieces as
    /// separate deltas rather than merging what is already waiting.
    pub fn replay(&self) -> ReplyStream {
        let mut items = Vec::new();
        for choice in &self.choices {
            let index = choice.index;
            let message = &choice.message;
            let piece = |delta: ChoiceDelta| StreamItem::Delta(ChoiceDelta { index, ..delta });
            if let Some(reasoning) = &message.reasoning_content {
                items.push(piece(ChoiceDelta {
                    reasoning_content: Some(reasoning.clone()),
                    ..ChoiceDelta::default()
                }));
            }
            if let Some(content) = &message.content {
                for text in pieces(content) {
                    items.push(piece(ChoiceDelta::text(text)));
                }
            }
            if let Some(refusal) = &message.refusal {
                items.push(piece(ChoiceDelta {
                    refusal: Some(refusal.clone()),
                    ..ChoiceDelta::default()
                }));
            }
            for (position, call) in message.tool_calls.iter().enumerate() {
                items.push(piece(ChoiceDelta {
                    tool_calls: vec![ToolCallDelta {
                        index: u32::try_from(position).unwrap_or(u32::MAX),
                        id: Some(call.id.clone()),
                        kind: Some(call.kind.clone()),
                        function: Some(FunctionCallDelta {
                            name: Some(call.function.name.clone()),
                            arguments: Some(call.function.arguments.clone()),
                        }),
                    }],
                    ..ChoiceDelta::default()
                }));
            }
            if let Some(logprobs) = &choice.logprobs {
                items.push(piece(ChoiceDelta {
                    logprobs: Some(logprobs.clone()),
                    ..ChoiceDelta::default()
                }));
            }
        }
        items.push(StreamItem::Done {
            finish_reasons: self
                .choices
                .iter()
                .map(|c| (c.index, c.finish_reason.clone()))
                .collect(),
            usage: Some(self.usage),
            model: self.model.clone(),
        });
        futures::stream::iter(items)
            .then(|item| async move {
                tokio::task::yield_now().await;
                Ok(item)
            })
            .boxed()
    }
}

/// `text` cut at word boundaries into at most about [`MAX_PIECES`] pieces.
fn pieces(text: &str) -> Vec<String> {
    let target = (text.len() / MAX_PIECES).max(MIN_PIECE_CHARS);
    let mut out = Vec::new();
    let mut current = String::new();
    for word in text.split_inclusive(' ') {
        current.push_str(word);
        if current.len() >= target {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The heap memory of one choice of a kept reply.
fn choice_bytes(choice: &Choice) -> usize {
    let text = |text: &Option<String>| text.as_ref().map_or(0, memory::string);
    let message = &choice.message;
    let tool_calls: usize = message
        .tool_calls
        .iter()
        .map(|call| {
            memory::string(&call.id)
                + memory::string(&call.kind)
                + memory::string(&call.function.name)
                + memory::string(&call.function.arguments)
        })
        .sum();
    text(&message.content)
        + text(&message.refusal)
        + text(&message.reasoning_content)
        + memory::allocation(message.tool_calls.capacity() * size_of::<ToolCall>())
        + tool_calls
        + memory::string(&choice.finish_reason)
        // A JSON value in memory (a map per token, its strings and numbers) takes several
        // times its text: `LOGPROBS_FACTOR` times.
        + choice
            .logprobs
            .as_ref()
            .map_or(0, |logprobs| LOGPROBS_FACTOR * logprobs.to_string().len())
}

#[cfg(test)]
mod tests {
    use chatq_common::choices::{AssistantMessage, ChoicesBuilder};

    use super::*;

    #[tokio::test]
    async fn a_replayed_reply_builds_back_into_the_same_choices() {
        let text = "word ".repeat(200);
        let reply = CachedReply {
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    content: Some(text.clone()),
                    ..AssistantMessage::default()
                },
                finish_reason: "stop".into(),
                logprobs: None,
            }],
            usage: Usage::new(3, 200),
            model: "m".into(),
        };
        let items: Vec<StreamItem> = reply
            .replay()
            .map(|item| item.unwrap())
            .collect::<Vec<_>>()
            .await;
        let deltas = items.len() - 1;
        assert!((2..=MAX_PIECES + 1).contains(&deltas), "{deltas} deltas");
        let mut builder = ChoicesBuilder::new();
        for item in items {
            match item {
                StreamItem::Delta(delta) => builder.apply(delta),
                StreamItem::Done { finish_reasons, .. } => {
                    for (index, reason) in finish_reasons {
                        builder.finish(index, reason);
                    }
                }
            }
        }
        assert_eq!(builder.build("stop"), reply.choices);
        assert_eq!(pieces(&text).concat(), text);
    }
}
