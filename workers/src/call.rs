//! The provider call of one attempt: stream the reply, publishing deltas as they arrive.

use std::time::Instant;

use chatq_common::chat::{Usage, estimate_tokens};
use chatq_common::metrics as names;
use futures::{FutureExt, StreamExt};

use crate::events::AttemptEvents;
use crate::provider::{Provider, ProviderError, ProviderRequest, StreamItem};

/// A reply read from the provider.
#[derive(Debug)]
pub struct Reply {
    pub content: String,
    pub finish_reason: String,
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

fn elapsed_ms(since: Instant) -> i32 {
    i32::try_from(since.elapsed().as_millis()).unwrap_or(i32::MAX)
}

/// Streams the reply, publishing deltas as they arrive. Deltas that are already waiting are
/// merged into one event (never delaying the first token).
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
    let failed = |error: ProviderError| {
        metrics::counter!(names::PROVIDER_CALLS, "outcome" => error.kind()).increment(1);
        CallFailed {
            error,
            upstream_ms: elapsed_ms(started),
        }
    };
    let mut stream = provider.complete_stream(request).await.map_err(failed)?;
    let mut content = String::new();
    let mut ttft_ms = None;
    let mut pending = String::new();
    loop {
        let Some(item) = stream.next().await else {
            return Err(failed(ProviderError::Truncated));
        };
        let mut done = None;
        match item.map_err(failed)? {
            StreamItem::Delta(text) => pending.push_str(&text),
            StreamItem::Done {
                finish_reason,
                usage,
                model,
            } => done = Some((finish_reason, usage, model)),
        }
        // Merge deltas that are already here, without waiting for more.
        while done.is_none()
            && let Some(Some(item)) = stream.next().now_or_never()
        {
            match item.map_err(failed)? {
                StreamItem::Delta(text) => pending.push_str(&text),
                StreamItem::Done {
                    finish_reason,
                    usage,
                    model,
                } => done = Some((finish_reason, usage, model)),
            }
        }
        if !pending.is_empty() && (done.is_some() || !events.should_coalesce()) {
            ttft_ms.get_or_insert_with(|| elapsed_ms(started));
            events.delta(&pending).await;
            content.push_str(&pending);
            pending.clear();
        }
        if let Some((finish_reason, usage, model)) = done {
            let usage = usage.unwrap_or_else(|| estimated_usage(request, &content));
            let upstream_ms = elapsed_ms(started);
            if let Some(ttft) = ttft_ms {
                metrics::histogram!(names::PROVIDER_TTFT).record(f64::from(ttft) / 1000.0);
            }
            metrics::histogram!(names::PROVIDER_DURATION).record(f64::from(upstream_ms) / 1000.0);
            metrics::counter!(names::PROVIDER_CALLS, "outcome" => "ok").increment(1);
            return Ok(Reply {
                content,
                finish_reason,
                usage,
                model,
                ttft_ms,
                upstream_ms,
            });
        }
    }
}

/// Usage for a provider that reports none: estimated from the text.
fn estimated_usage(request: &ProviderRequest, content: &str) -> Usage {
    let prompt: usize = request
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum();
    Usage::new(
        u32::try_from(prompt).unwrap_or(u32::MAX),
        u32::try_from(estimate_tokens(content)).unwrap_or(u32::MAX),
    )
}
