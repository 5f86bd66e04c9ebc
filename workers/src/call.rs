//! The provider call of one attempt: stream the reply, publishing deltas as they arrive, and put
//! its choices together.

use std::time::Instant;

use chatq_common::chat::{Usage, estimate_tokens};
use chatq_common::choices::{Choice, ChoiceDelta, ChoicesBuilder};
use chatq_common::metrics as names;
use futures::{FutureExt, StreamExt};

use crate::events::AttemptEvents;
use crate::provider::{Provider, ProviderError, ProviderRequest, ReplyStream, StreamItem};

/// A reply read from the provider.
#[derive(Debug)]
pub struct Reply {
    /// Every choice, in index order (at least choice 0).
    pub choices: Vec<Choice>,
    pub usage: Usage,
    /// The model the provider says answered.
    pub model: String,
    pub ttft_ms: Option<i32>,
    pub upstream_ms: i32,
}

/// Why the provider gave no reply, and how long it took to say so.
#[derive(Debug)]
pub struct CallFailed {
    pub error: ProviderError,
    pub upstream_ms: i32,
}

/// What a provider call was for: the `call` label of `chatq_provider_calls_total` (see
/// [`names::PROVIDER_CALL_KINDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A reply, streamed ([`stream_reply`]).
    Chat,
    /// The embedding of a request, for the semantic cache (`crate::cache::semantic`).
    Embedding,
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Chat => "chat",
            CallKind::Embedding => "embedding",
        }
    }
}

/// Counts one provider call in `chatq_provider_calls_total`; `outcome` is `ok` or the error's
/// [`ProviderError::kind`]. Every call to the provider is counted here, whatever it was for.
pub fn count_call(kind: CallKind, outcome: &'static str) {
    metrics::counter!(names::PROVIDER_CALLS, "call" => kind.as_str(), "outcome" => outcome)
        .increment(1);
}

fn elapsed_ms(since: Instant) -> i32 {
    i32::try_from(since.elapsed().as_millis()).unwrap_or(i32::MAX)
}

/// Streams the reply, publishing deltas as they arrive. Pieces that are already waiting are
/// merged into one event per choice (never delaying the first token).
///
/// # Errors
/// The provider failed, or its stream ended before saying the reply was done.
#[tracing::instrument(level = "debug", name = "call", skip_all, fields(model = %request.params.model))]
pub async fn stream_reply(
    provider: &dyn Provider,
    request: &ProviderRequest,
    events: &mut AttemptEvents,
) -> Result<Reply, CallFailed> {
    let started = Instant::now();
    let stream = match provider.complete_stream(request).await {
        Ok(stream) => stream,
        Err(error) => {
            count_call(CallKind::Chat, error.kind());
            return Err(CallFailed {
                error,
                upstream_ms: elapsed_ms(started),
            });
        }
    };
    relay(stream, request, events, started, true).await
}

/// Publishes a reply that did not come from the provider (the reply cache's), exactly as
/// [`stream_reply`] publishes one that did, and puts it together the same way.
///
/// # Errors
/// The stream ended before saying the reply was done.
pub async fn replay_reply(
    stream: ReplyStream,
    request: &ProviderRequest,
    events: &mut AttemptEvents,
) -> Result<Reply, CallFailed> {
    relay(stream, request, events, Instant::now(), false).await
}

/// Reads `stream` to its end, publishing deltas; `from_provider` says whether the provider's
/// metrics count it.
async fn relay(
    mut stream: ReplyStream,
    request: &ProviderRequest,
    events: &mut AttemptEvents,
    started: Instant,
    from_provider: bool,
) -> Result<Reply, CallFailed> {
    let failed = |error: ProviderError| {
        if from_provider {
            count_call(CallKind::Chat, error.kind());
        }
        CallFailed {
            error,
            upstream_ms: elapsed_ms(started),
        }
    };
    let mut answer = ChoicesBuilder::new();
    let mut ttft_ms = None;
    // Pieces read but not yet published, merged while they belong to one choice.
    let mut pending: Vec<ChoiceDelta> = Vec::new();
    loop {
        let Some(item) = stream.next().await else {
            return Err(failed(ProviderError::Truncated));
        };
        let mut done = take(item.map_err(failed)?, &mut pending);
        // Merge pieces that are already here, without waiting for more.
        while done.is_none()
            && let Some(Some(item)) = stream.next().now_or_never()
        {
            done = take(item.map_err(failed)?, &mut pending);
        }
        if !pending.is_empty() && (done.is_some() || !events.should_coalesce()) {
            ttft_ms.get_or_insert_with(|| elapsed_ms(started));
            for delta in pending.drain(..) {
                events.delta(&delta).await;
                answer.apply(delta);
            }
        }
        if let Some((finish_reasons, usage, model)) = done {
            for (index, reason) in finish_reasons {
                answer.finish(index, reason);
            }
            let choices = answer.build("stop");
            let usage = usage.unwrap_or_else(|| estimated_usage(request, &choices));
            let upstream_ms = elapsed_ms(started);
            if from_provider {
                if let Some(ttft) = ttft_ms {
                    metrics::histogram!(names::PROVIDER_TTFT).record(f64::from(ttft) / 1000.0);
                }
                metrics::histogram!(names::PROVIDER_DURATION)
                    .record(f64::from(upstream_ms) / 1000.0);
                count_call(CallKind::Chat, "ok");
            }
            return Ok(Reply {
                choices,
                usage,
                model,
                ttft_ms,
                upstream_ms,
            });
        }
    }
}

type Done = (Vec<(u32, String)>, Option<Usage>, String);

/// Adds a piece to `pending` (merged into the last one when it is of the same choice), or
/// returns the end of the stream.
fn take(item: StreamItem, pending: &mut Vec<ChoiceDelta>) -> Option<Done> {
    match item {
        StreamItem::Delta(delta) => {
            let unmerged = match pending.last_mut() {
                Some(last) => last.merge(delta),
                None => Some(delta),
            };
            pending.extend(unmerged);
            None
        }
        StreamItem::Done {
            finish_reasons,
            usage,
            model,
        } => Some((finish_reasons, usage, model)),
    }
}

/// Usage for a provider that reports none: estimated from the text.
fn estimated_usage(request: &ProviderRequest, choices: &[Choice]) -> Usage {
    let prompt: usize = request
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum();
    let completion: usize = choices
        .iter()
        .map(|c| {
            let message = &c.message;
            let calls: usize = message
                .tool_calls
                .iter()
                .map(|call| {
                    estimate_tokens(&call.function.arguments) + estimate_tokens(&call.function.name)
                })
                .sum();
            estimate_tokens(message.content.as_deref().unwrap_or_default()) + calls
        })
        .sum();
    Usage::new(
        u32::try_from(prompt).unwrap_or(u32::MAX),
        u32::try_from(completion).unwrap_or(u32::MAX),
    )
}
