//! The OpenAI chat completions API as chatq's clients speak it (`POST /v1/chat/completions`):
//! the request it accepts ([`request`], its messages and tools checked by `messages` and
//! `tools`), the completion and chunk shapes it answers with
//! ([`response`]), and a job's events turned into chunks ([`stream`]). The provider side of the
//! same protocol is `chatq_workers::provider::openai`.

pub(crate) mod messages;
pub mod request;
pub mod response;
pub mod stream;
mod tools;

pub use request::ChatCompletionRequest;
pub use response::{ChatCompletion, ChunkWriter, completion_id};
