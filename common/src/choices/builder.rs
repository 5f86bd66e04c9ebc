//! Putting a streamed answer back together: pieces of several choices, interleaved, into whole
//! [`Choice`]s.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    AssistantMessage, Choice, ChoiceDelta, FunctionCall, ToolCall, append_logprobs, append_opt,
    function_type,
};

/// Puts a streamed answer back together, choice by choice.
#[derive(Debug, Default)]
pub struct ChoicesBuilder {
    choices: BTreeMap<u32, Building>,
}

#[derive(Debug, Default)]
struct Building {
    content: String,
    /// Whether any content arrived (a reply of only tool calls has `content: null`).
    has_content: bool,
    refusal: Option<String>,
    reasoning: Option<String>,
    /// By the provider's index of each call.
    calls: BTreeMap<u32, ToolCall>,
    logprobs: Option<Value>,
    finish_reason: Option<String>,
}

impl ChoicesBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&mut self, delta: ChoiceDelta) {
        let choice = self.choices.entry(delta.index).or_default();
        if !delta.text.is_empty() {
            choice.has_content = true;
            choice.content.push_str(&delta.text);
        }
        append_opt(&mut choice.refusal, delta.refusal);
        append_opt(&mut choice.reasoning, delta.reasoning_content);
        append_logprobs(&mut choice.logprobs, delta.logprobs);
        for piece in delta.tool_calls {
            let call = choice.calls.entry(piece.index).or_insert_with(|| ToolCall {
                id: String::new(),
                kind: function_type(),
                function: FunctionCall {
                    name: String::new(),
                    arguments: String::new(),
                },
            });
            if let Some(id) = piece.id {
                call.id = id;
            }
            if let Some(kind) = piece.kind {
                call.kind = kind;
            }
            if let Some(function) = piece.function {
                if let Some(name) = function.name {
                    call.function.name.push_str(&name);
                }
                if let Some(arguments) = function.arguments {
                    call.function.arguments.push_str(&arguments);
                }
            }
        }
    }

    /// Records how choice `index` ended.
    pub fn finish(&mut self, index: u32, reason: String) {
        self.choices.entry(index).or_default().finish_reason = Some(reason);
    }

    /// The finished choices, in index order; at least choice 0. A choice the provider did not say
    /// how it ended gets `default_finish` (`tool_calls` when it called tools).
    pub fn build(mut self, default_finish: &str) -> Vec<Choice> {
        self.choices.entry(0).or_default();
        self.choices
            .into_iter()
            .map(|(index, built)| {
                let tool_calls: Vec<ToolCall> = built.calls.into_values().collect();
                let finish_reason = built.finish_reason.unwrap_or_else(|| {
                    if tool_calls.is_empty() {
                        default_finish.to_owned()
                    } else {
                        "tool_calls".to_owned()
                    }
                });
                Choice {
                    index,
                    message: AssistantMessage {
                        // `null` for an answer of only tool calls or only a refusal.
                        content: (built.has_content
                            || (tool_calls.is_empty() && built.refusal.is_none()))
                        .then_some(built.content),
                        refusal: built.refusal,
                        tool_calls,
                        reasoning_content: built.reasoning,
                    },
                    finish_reason,
                    logprobs: built.logprobs,
                }
            })
            .collect()
    }
}
