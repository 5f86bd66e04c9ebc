//! Reading a streamed completion: server-sent `chat.completion.chunk` events into deltas and a
//! final `Done`, with every byte counted against the response cap.

use bytes::Bytes;
use chatq_common::chat::Usage;
use futures::{Stream, StreamExt};

use super::wire::WireChunk;
use crate::provider::sse::SseDecoder;
use crate::provider::{ProviderError, StreamItem};

/// Turns the raw body of a streamed completion into [`StreamItem`]s.
pub(super) fn decode_stream(
    chunks: impl Stream<Item = Result<Bytes, ProviderError>> + Send + Unpin + 'static,
    max_bytes: usize,
    requested_model: String,
) -> impl Stream<Item = Result<StreamItem, ProviderError>> + Send + 'static {
    struct State<S> {
        chunks: S,
        decoder: SseDecoder,
        read: usize,
        max_bytes: usize,
        pending: std::collections::VecDeque<StreamItem>,
        finish_reasons: Vec<(u32, String)>,
        usage: Option<Usage>,
        model: String,
        finished: bool,
    }
    let state = State {
        chunks,
        decoder: SseDecoder::new(),
        read: 0,
        max_bytes,
        pending: Default::default(),
        finish_reasons: Vec::new(),
        usage: None,
        model: requested_model,
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.pending.pop_front() {
                return Some((Ok(item), state));
            }
            if state.finished {
                return None;
            }
            let Some(chunk) = state.chunks.next().await else {
                // The body ended. Lenient with servers that omit `[DONE]` after a finish reason.
                state.finished = true;
                return if state.finish_reasons.is_empty() {
                    Some((Err(ProviderError::Truncated), state))
                } else {
                    Some((
                        Ok(StreamItem::Done {
                            finish_reasons: std::mem::take(&mut state.finish_reasons),
                            usage: state.usage,
                            model: state.model.clone(),
                        }),
                        state,
                    ))
                };
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    state.finished = true;
                    return Some((Err(err), state));
                }
            };
            state.read += chunk.len();
            if state.read > state.max_bytes {
                state.finished = true;
                return Some((
                    Err(ProviderError::TooLarge {
                        limit: state.max_bytes,
                    }),
                    state,
                ));
            }
            let events = match state.decoder.feed(&chunk) {
                Ok(events) => events,
                Err(err) => {
                    state.finished = true;
                    return Some((Err(ProviderError::Malformed(err.to_string())), state));
                }
            };
            for data in events {
                if data.trim() == "[DONE]" {
                    state.finished = true;
                    state.pending.push_back(StreamItem::Done {
                        finish_reasons: std::mem::take(&mut state.finish_reasons),
                        usage: state.usage,
                        model: state.model.clone(),
                    });
                    break;
                }
                let parsed: WireChunk = match serde_json::from_str(&data) {
                    Ok(parsed) => parsed,
                    Err(err) => {
                        state.finished = true;
                        state.pending.clear();
                        return Some((
                            Err(ProviderError::Malformed(format!(
                                "a stream chunk is not JSON: {err}"
                            ))),
                            state,
                        ));
                    }
                };
                if let Some(error) = parsed.error {
                    state.finished = true;
                    state.pending.clear();
                    return Some((
                        Err(ProviderError::Server {
                            status: 500,
                            message: error.message,
                            retry_after: None,
                        }),
                        state,
                    ));
                }
                if let Some(model) = parsed.model {
                    state.model = model;
                }
                if let Some(usage) = parsed.usage {
                    state.usage = Some(usage.into_usage());
                }
                for mut choice in parsed.choices {
                    if let Some(reason) = choice.finish_reason.take() {
                        state.finish_reasons.push((choice.index, reason));
                    }
                    if let Some(delta) = choice.into_delta() {
                        state.pending.push_back(StreamItem::Delta(delta));
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use chatq_common::choices::ChoiceDelta;

    use super::*;

    async fn decode(parts: &[&str]) -> Vec<Result<StreamItem, ProviderError>> {
        let chunks: Vec<Result<Bytes, ProviderError>> = parts
            .iter()
            .map(|part| Ok(Bytes::copy_from_slice(part.as_bytes())))
            .collect();
        decode_stream(futures::stream::iter(chunks), 1 << 20, "m".into())
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_complete_stream_yields_deltas_then_done_with_usage() {
        let items = decode(&[
            "data: {\"model\":\"gpt\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
        ])
        .await;
        let items: Vec<StreamItem> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            items,
            vec![
                StreamItem::Delta(ChoiceDelta::text("Hel")),
                StreamItem::Delta(ChoiceDelta::text("lo")),
                StreamItem::Done {
                    finish_reasons: vec![(0, "stop".into())],
                    usage: Some(Usage::new(3, 2)),
                    model: "gpt".into()
                },
            ]
        );
    }

    #[tokio::test]
    async fn tool_calls_choices_and_usage_details_come_through_as_sent() {
        let items = decode(&[
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":1,\"delta\":{\"reasoning\":\"hm\",\"content\":\"B\"},\"logprobs\":{\"content\":[]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"},{\"index\":1,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":1},\"completion_tokens_details\":{\"reasoning_tokens\":1}}}\n\ndata: [DONE]\n\n",
        ])
        .await;
        let items: Vec<StreamItem> = items.into_iter().map(Result::unwrap).collect();
        let mut builder = chatq_common::choices::ChoicesBuilder::new();
        let mut done = None;
        for item in items {
            match item {
                StreamItem::Delta(delta) => builder.apply(delta),
                StreamItem::Done {
                    finish_reasons,
                    usage,
                    ..
                } => {
                    for (index, reason) in finish_reasons {
                        builder.finish(index, reason);
                    }
                    done = usage;
                }
            }
        }
        let choices = builder.build("stop");
        assert_eq!(choices[0].message.tool_calls[0].function.arguments, "{}");
        assert_eq!(choices[0].finish_reason, "tool_calls");
        assert_eq!(choices[1].message.content.as_deref(), Some("B"));
        assert_eq!(choices[1].message.reasoning_content.as_deref(), Some("hm"));
        let usage = done.unwrap();
        assert_eq!(usage.prompt_tokens_details.unwrap().cached_tokens, 1);
        assert_eq!(usage.completion_tokens_details.unwrap().reasoning_tokens, 1);
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_truncated() {
        let items = decode(&["data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"]).await;
        assert!(matches!(items.last(), Some(Err(ProviderError::Truncated))));
    }

    #[tokio::test]
    async fn garbage_is_malformed_and_nothing_after_it_is_yielded() {
        let items = decode(&[
            "data: {not json\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
        ])
        .await;
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0], Err(ProviderError::Malformed(_))));
    }

    #[tokio::test]
    async fn an_oversized_stream_stops_at_the_limit() {
        let big = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(100)
        );
        let chunks: Vec<Result<Bytes, ProviderError>> =
            (0..10).map(|_| Ok(Bytes::from(big.clone()))).collect();
        let items: Vec<_> = decode_stream(futures::stream::iter(chunks), 500, "m".into())
            .collect()
            .await;
        assert!(matches!(
            items.last(),
            Some(Err(ProviderError::TooLarge { limit: 500 }))
        ));
    }
}
