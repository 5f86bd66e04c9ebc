//! A response's events as server-sent events: `event: <type>` and `data: <event JSON>`, as the
//! OpenAI SDKs read them, from the first event (`POST /v1/responses` with `stream: true`) or
//! after a given `sequence_number` (`GET /v1/responses/{id}?stream=true&starting_after=N`).
//!
//! The job's events are read from the start of its log every time and translated (see
//! `events`); events numbered `starting_after` or below are translated but not sent.

use std::collections::VecDeque;
use std::convert::Infallible;

use crate::stream_slots::StreamSlot;
use axum::response::sse::Event;
use futures::Stream;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::events::Translator;
use crate::hub::ResumingCursor;
use crate::submit::abandoned::AbandonGuard;

/// What a response stream follows and holds.
pub struct ResponseStream {
    pub cursor: ResumingCursor,
    pub translator: Translator,
    /// Events numbered this or below are not sent.
    pub starting_after: Option<u64>,
    pub slot: StreamSlot,
    /// Cancels the job if a foreground stream is dropped before its job started.
    pub abandon: AbandonGuard,
}

/// The parts of a [`ResponseStream`] the stream reads as it goes.
struct Following {
    cursor: ResumingCursor,
    translator: Translator,
    starting_after: Option<u64>,
    abandon: AbandonGuard,
}

struct State {
    stream: Following,
    pending: VecDeque<Value>,
    finished: bool,
    stop: CancellationToken,
    _slot: StreamSlot,
}

/// The SSE events of `stream`; `stop` ends it when the server shuts down (the client resumes
/// with `starting_after`).
pub fn sse_events(
    stream: ResponseStream,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ResponseStream {
        cursor,
        translator,
        starting_after,
        slot,
        abandon,
    } = stream;
    let state = State {
        stream: Following {
            cursor,
            translator,
            starting_after,
            abandon,
        },
        _slot: slot,
        pending: VecDeque::new(),
        finished: false,
        stop,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok(to_sse(&event)), state));
            }
            if state.finished {
                return None;
            }
            let event = tokio::select! {
                event = state.stream.cursor.next() => event,
                () = state.stop.cancelled() => return None,
            };
            let Some(event) = event else {
                // The job's events ended without a terminal one (not in practice).
                state.finished = true;
                state.pending.push_back(json!({
                    "type": "error", "code": "stream_interrupted", "param": null,
                    "message": "The stream ended before the response did; resume it with starting_after.",
                    "sequence_number": null,
                }));
                continue;
            };
            let after = state.stream.starting_after;
            let events = state.stream.translator.on(&event.body);
            state.pending.extend(events.into_iter().filter(|e| {
                let seq = e["sequence_number"].as_u64().unwrap_or(0);
                after.is_none_or(|after| seq > after)
            }));
            if state.stream.translator.ended() {
                state.stream.abandon.disarm();
                state.finished = true;
            }
        }
    })
}

fn to_sse(event: &Value) -> Event {
    let kind = event["type"].as_str().unwrap_or("error");
    Event::default().event(kind).data(event.to_string())
}
