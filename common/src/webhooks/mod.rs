//! Completion webhooks: what a tenant's endpoints are sent when its jobs, responses and batches
//! end.
//!
//! - [`events`]: the event types an endpoint may ask for, and the body of a delivery.
//! - [`target`]: which URLs may receive deliveries (public addresses only, unless allowed).
//! - [`signing`]: the Standard Webhooks signature every delivery carries.
//!
//! The endpoints and the outbox of deliveries live in Postgres ([`crate::db::webhooks`]); the
//! outbox is written by a trigger in the transaction that commits each result, and the workers
//! deliver from it (`chatq_workers::webhooks`).

pub mod events;
pub mod signing;
pub mod target;
