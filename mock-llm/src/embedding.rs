//! What the mock's `/v1/embeddings` answers: the simulated provider's embeddings, so chatq's
//! semantic cache can be tested against real HTTP. One implementation, in the product
//! ([`chatq_workers::provider::simulated::embedding`], which documents how it works: a bag of
//! words hashed into [`DIMENSIONS`] numbers and scaled to length 1, so the cosine similarity of
//! two texts is about the share of words they have in common); the mock only borrows it.
//!
//! Every input gets its embedding whatever the model asked for; of [`crate::MockConfig`], only
//! `embeddings_status` applies (the rates and faults are the chat completions').

pub use chatq_workers::provider::simulated::embedding::{DIMENSIONS, embed};
