//! A streamed chat completion: the job's events, as `chat.completion.chunk` lines.
//!
//! The first chunks carry the assistant role of each choice; each `message.delta` becomes a chunk
//! of its choice (content, tool calls, refusal, reasoning, logprobs, as the provider sent them);
//! the terminal event becomes each choice's finish chunk (and the usage chunk, when asked for)
//! and `[DONE]`, or an error line. If the reply restarts after text was sent (the provider failed mid-reply and the
//! job was retried), the stream ends with an error rather than mixing two attempts.

use std::collections::VecDeque;
use std::convert::Infallible;

use crate::stream_slots::StreamSlot;
use axum::response::sse::Event;
use chatq_common::events::EventBody;
use chatq_common::job::JobStatus;
use futures::Stream;
use tokio_util::sync::CancellationToken;

use super::response::{ChunkWriter, stream_error};
use crate::hub::ResumingCursor;
use crate::submit::abandoned::AbandonGuard;

/// Where a streamed completion is.
struct ChunkState {
    cursor: ResumingCursor,
    writer: ChunkWriter,
    /// Sent first, before any event arrives.
    role_sent: bool,
    content_sent: bool,
    /// Chunks still to send for the event just read.
    pending: VecDeque<String>,
    finished: bool,
    _slot: StreamSlot,
    /// Cancels the job if the client leaves before it started; disarmed at its end.
    abandon: AbandonGuard,
    stop: CancellationToken,
}

/// The chunks of a completion whose events `cursor` follows. `slot` is the event-stream slot the
/// response holds; `abandon` cancels the job if the client leaves before it starts; `stop` ends
/// the stream when the server shuts down.
pub fn chunk_stream(
    cursor: ResumingCursor,
    writer: ChunkWriter,
    slot: StreamSlot,
    abandon: AbandonGuard,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = ChunkState {
        cursor,
        writer,
        role_sent: false,
        content_sent: false,
        pending: VecDeque::new(),
        finished: false,
        _slot: slot,
        abandon,
        stop,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(data) = state.pending.pop_front() {
                return Some((Ok(Event::default().data(data)), state));
            }
            if state.finished {
                return None;
            }
            if !state.role_sent {
                state.role_sent = true;
                let roles: Vec<String> = state.writer.roles().collect();
                state.pending.extend(roles);
                continue;
            }
            let event = tokio::select! {
                event = state.cursor.next() => event,
                () = state.stop.cancelled() => None,
            };
            match event {
                Some(event) => state.on_event(&event.body),
                None => {
                    // The job's events ended without a terminal one (the server is stopping).
                    state.finished = true;
                    state.pending.push_back(stream_error(
                        "api_error",
                        "stream_interrupted",
                        "The stream was interrupted before the reply finished; retry the request.",
                    ));
                }
            }
        }
    })
}

impl ChunkState {
    fn on_event(&mut self, body: &EventBody) {
        match body {
            EventBody::Queued(_) => {}
            EventBody::Started(started) => {
                if started.attempt > 1 && self.content_sent {
                    self.finished = true;
                    self.pending.push_back(stream_error(
                        "api_error",
                        "reply_restarted",
                        "The model provider failed mid-reply and the reply restarted; retry the request.",
                    ));
                }
            }
            EventBody::Delta(delta) => {
                self.content_sent = true;
                self.pending.push_back(self.writer.delta(delta));
            }
            EventBody::Succeeded(job) | EventBody::Failed(job) | EventBody::Cancelled(job) => {
                self.finished = true;
                self.abandon.disarm();
                match (&job.status, &job.reply) {
                    (JobStatus::Succeeded, Some(reply)) => {
                        self.pending.extend(self.writer.ending(reply));
                        self.pending.push_back("[DONE]".into());
                    }
                    _ => {
                        let (code, message) = job
                            .error
                            .as_ref()
                            .map_or(("job_failed", "the request failed"), |e| {
                                (e.kind.as_str(), e.message.as_str())
                            });
                        self.pending
                            .push_back(stream_error("api_error", code, message));
                    }
                }
            }
        }
    }
}
