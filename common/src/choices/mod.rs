//! The assistant's answer as the OpenAI chat completions API shapes it: one or more choices, each
//! an assistant message (text, tool calls, a refusal, reasoning text) with its finish reason and
//! log probabilities.
//!
//! A provider streams an answer as [`ChoiceDelta`]s; workers publish them as `message.delta`
//! events (a delta *is* the event's data) and put them back together with [`ChoicesBuilder`] into
//! the [`Choice`]s a job stores. Everything a provider sends inside these shapes is kept as it
//! came: tool-call arguments are text, log probabilities are passed on without being read.

mod builder;

pub use builder::ChoicesBuilder;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A function call the assistant asks the client to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as the model wrote it (possibly not valid JSON: the client decides).
    pub arguments: String,
}

pub(crate) fn function_type() -> String {
    "function".into()
}

/// A piece of a streamed tool call: `index` names the call within its choice; the first piece of
/// a call carries its id, type and name, later pieces more of its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// The assistant message of one choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    /// `None` when the assistant only called tools.
    pub content: Option<String>,
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Reasoning text some providers send beside the content (`reasoning_content`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// One choice of a finished answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: String,
    /// `{"content": [...], "refusal": [...]}` as the provider sent it, when asked for.
    #[serde(default)]
    pub logprobs: Option<Value>,
}

/// A piece of one choice of a streamed answer: the data of a `message.delta` event. `delta` is
/// more text of the content (the only field a text reply uses); the others appear when the
/// answer has several choices, calls tools, refuses, reasons aloud or carries log probabilities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceDelta {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub index: u32,
    #[serde(rename = "delta", default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ChoiceDelta {
    /// More content text of choice 0: what a plain text reply streams.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// Whether the delta carries nothing.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
            && self.tool_calls.is_empty()
            && self.refusal.is_none()
            && self.reasoning_content.is_none()
            && self.logprobs.is_none()
    }

    /// Appends `next` to this delta, so two pieces travel as one event. Only pieces of the same
    /// choice merge: a piece of another choice is handed back.
    #[must_use = "a piece of another choice is handed back, not merged"]
    pub fn merge(&mut self, next: ChoiceDelta) -> Option<ChoiceDelta> {
        if next.index != self.index {
            return Some(next);
        }
        self.text.push_str(&next.text);
        append_opt(&mut self.refusal, next.refusal);
        append_opt(&mut self.reasoning_content, next.reasoning_content);
        append_logprobs(&mut self.logprobs, next.logprobs);
        for call in next.tool_calls {
            match self.tool_calls.last_mut() {
                // More arguments of the call the last piece was already extending.
                Some(last) if last.index == call.index && call.id.is_none() => {
                    let more = call.function.and_then(|f| f.arguments).unwrap_or_default();
                    let function = last.function.get_or_insert_with(Default::default);
                    function
                        .arguments
                        .get_or_insert_with(String::new)
                        .push_str(&more);
                }
                _ => self.tool_calls.push(call),
            }
        }
        None
    }
}

impl Choice {
    /// The whole choice as one delta: how a client that saw none of the stream is told the
    /// answer at once.
    pub fn as_delta(&self) -> ChoiceDelta {
        ChoiceDelta {
            index: self.index,
            text: self.message.content.clone().unwrap_or_default(),
            tool_calls: self
                .message
                .tool_calls
                .iter()
                .zip(0..)
                .map(|(call, index)| ToolCallDelta {
                    index,
                    id: Some(call.id.clone()),
                    kind: Some(call.kind.clone()),
                    function: Some(FunctionCallDelta {
                        name: Some(call.function.name.clone()),
                        arguments: Some(call.function.arguments.clone()),
                    }),
                })
                .collect(),
            refusal: self.message.refusal.clone(),
            reasoning_content: self.message.reasoning_content.clone(),
            logprobs: self.logprobs.clone(),
        }
    }
}

pub(crate) fn append_opt(to: &mut Option<String>, more: Option<String>) {
    if let Some(more) = more {
        to.get_or_insert_with(String::new).push_str(&more);
    }
}

/// Log probabilities arrive as `{"content": [..], "refusal": [..]}` per chunk: the lists are
/// appended; anything else the provider adds is kept from its latest chunk.
pub(crate) fn append_logprobs(to: &mut Option<Value>, more: Option<Value>) {
    let Some(Value::Object(more)) = more else {
        return;
    };
    let Value::Object(to) = to.get_or_insert_with(|| Value::Object(Map::new())) else {
        return;
    };
    for (key, value) in more {
        match (to.get_mut(&key), value) {
            (Some(Value::Array(list)), Value::Array(items)) => list.extend(items),
            (_, value) => {
                to.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call_piece(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(str::to_owned),
            kind: id.map(|_| "function".to_owned()),
            function: Some(FunctionCallDelta {
                name: name.map(str::to_owned),
                arguments: Some(args.to_owned()),
            }),
        }
    }

    #[test]
    fn streamed_tool_calls_are_put_back_together_in_order() {
        let mut builder = ChoicesBuilder::new();
        for piece in [
            call_piece(0, Some("call_a"), Some("get_weather"), ""),
            call_piece(0, None, None, "{\"city\":"),
            call_piece(1, Some("call_b"), Some("get_time"), "{}"),
            call_piece(0, None, None, "\"Paris\"}"),
        ] {
            builder.apply(ChoiceDelta {
                tool_calls: vec![piece],
                ..ChoiceDelta::default()
            });
        }
        let choices = builder.build("stop");
        assert_eq!(choices.len(), 1);
        let message = &choices[0].message;
        assert_eq!(
            message.content, None,
            "a reply of only tool calls has no content"
        );
        assert_eq!(choices[0].finish_reason, "tool_calls");
        let calls: Vec<(&str, &str, &str)> = message
            .tool_calls
            .iter()
            .map(|c| {
                (
                    c.id.as_str(),
                    c.function.name.as_str(),
                    c.function.arguments.as_str(),
                )
            })
            .collect();
        assert_eq!(
            calls,
            [
                ("call_a", "get_weather", "{\"city\":\"Paris\"}"),
                ("call_b", "get_time", "{}")
            ]
        );
    }

    #[test]
    fn choices_text_refusal_reasoning_and_logprobs_accumulate_per_index() {
        let mut builder = ChoicesBuilder::new();
        builder.apply(ChoiceDelta {
            index: 1,
            text: "B".into(),
            logprobs: Some(json!({"content": [{"token": "B", "logprob": -0.1}]})),
            ..ChoiceDelta::default()
        });
        builder.apply(ChoiceDelta {
            reasoning_content: Some("think".into()),
            ..ChoiceDelta::text("A")
        });
        builder.apply(ChoiceDelta {
            index: 1,
            text: "b".into(),
            logprobs: Some(json!({"content": [{"token": "b", "logprob": -0.2}]})),
            ..ChoiceDelta::default()
        });
        builder.apply(ChoiceDelta {
            index: 2,
            refusal: Some("I can't ".into()),
            ..ChoiceDelta::default()
        });
        builder.apply(ChoiceDelta {
            index: 2,
            refusal: Some("help with that.".into()),
            ..ChoiceDelta::default()
        });
        builder.finish(1, "length".into());
        let choices = builder.build("stop");
        assert_eq!(choices.len(), 3);
        assert_eq!(
            choices[2].message.refusal.as_deref(),
            Some("I can't help with that.")
        );
        assert_eq!(choices[2].message.content, None, "a refusal has no content");
        assert_eq!(choices[0].message.content.as_deref(), Some("A"));
        assert_eq!(
            choices[0].message.reasoning_content.as_deref(),
            Some("think")
        );
        assert_eq!(choices[0].finish_reason, "stop");
        assert_eq!(choices[1].message.content.as_deref(), Some("Bb"));
        assert_eq!(choices[1].finish_reason, "length");
        assert_eq!(
            choices[1].logprobs,
            Some(
                json!({"content": [{"token": "B", "logprob": -0.1}, {"token": "b", "logprob": -0.2}]})
            )
        );
    }

    #[test]
    fn merged_deltas_build_the_same_answer_as_separate_ones() {
        let pieces = vec![
            ChoiceDelta::text("Hel"),
            ChoiceDelta::text("lo"),
            ChoiceDelta {
                tool_calls: vec![call_piece(0, Some("call_a"), Some("f"), "{\"a\"")],
                ..ChoiceDelta::default()
            },
            ChoiceDelta {
                tool_calls: vec![call_piece(0, None, None, ":1}")],
                ..ChoiceDelta::default()
            },
        ];
        let mut separate = ChoicesBuilder::new();
        for piece in pieces.clone() {
            separate.apply(piece);
        }
        let mut merged = ChoiceDelta::default();
        for piece in pieces {
            assert!(merged.merge(piece).is_none());
        }
        assert_eq!(
            merged.tool_calls.len(),
            1,
            "argument pieces join their call"
        );
        let mut at_once = ChoicesBuilder::new();
        at_once.apply(merged);
        assert_eq!(at_once.build("stop"), separate.build("stop"));
        let mut other = ChoiceDelta::text("x");
        let elsewhere = ChoiceDelta {
            index: 2,
            ..ChoiceDelta::text("y")
        };
        assert!(other.merge(elsewhere).is_some());
    }

    #[test]
    fn a_choice_as_one_delta_builds_the_same_choice() {
        let choice = Choice {
            index: 0,
            message: AssistantMessage {
                content: None,
                refusal: None,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: "f".into(),
                        arguments: "{}".into(),
                    },
                }],
                reasoning_content: None,
            },
            finish_reason: "tool_calls".into(),
            logprobs: None,
        };
        let mut builder = ChoicesBuilder::new();
        builder.apply(choice.as_delta());
        builder.finish(0, "tool_calls".into());
        assert_eq!(builder.build("stop"), vec![choice]);
    }

    #[test]
    fn a_text_delta_keeps_its_event_shape() {
        assert_eq!(
            serde_json::to_value(ChoiceDelta::text("hi")).unwrap(),
            json!({"delta": "hi"})
        );
    }
}
