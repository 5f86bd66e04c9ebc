//! What the mock answers: the simulated provider's deterministic text, so the same prompt gets
//! the same reply from either, and tests can compare what was streamed with what was stored, and
//! a replay with what was first sent. One implementation, in the product
//! ([`chatq_workers::provider::simulated::text`]); the mock only borrows it.

pub use chatq_workers::provider::simulated::text::{prompt_tokens, reply_tokens};
