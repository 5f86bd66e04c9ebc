//! Hostile clients: what a client that means harm (or is merely careless) can and cannot do.
//! One file per concern.

mod connections;
mod key_flood;
mod leaks;
mod models;
mod nul;
mod quotas;
mod rate_limits;
mod scopes;
