//! The OpenAI Responses API in background mode, on any chat-completions provider.
//!
//! A response is a chatq job: a chat completion on the interactive lane, recorded, queued, run,
//! retried and recovered like every other, so it has every guarantee a job has. Beside the job,
//! the response's own fields are stored (`chatq_common::db::responses`), and both are kept as
//! long as conversation data is (`retention_idle_conversations_secs`), not ten minutes.
//!
//! - [`request`]: the request, checked, and the chat completion it becomes (with the history of
//!   `previous_response_id`).
//! - [`input`]: the request's input as the message items a response keeps, and as the chat
//!   messages the provider is sent.
//! - [`create`]: recording and queueing a response, and answering at once, after the job, or
//!   with its events.
//! - [`stored`]: retrieve, stream from a sequence number, cancel, delete, input items.
//! - [`object`]: the Response object from the stored response and its job.
//! - [`events`]: the response's stream events, derived from the job's event log so that every
//!   reader numbers them alike; [`stream`]: those events as SSE.

pub mod create;
pub mod events;
mod input;
pub mod object;
pub mod request;
pub mod stored;
pub mod stream;
