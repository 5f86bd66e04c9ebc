//! Connecting to NATS. The client reconnects on its own after a connection is lost; these logs
//! say when that happens, so an operator can match a gap in service to its cause.
//!
//! On a cluster the client starts from the servers `CHATQ_NATS_URL` names (any that answers will
//! do), adds the servers the cluster announces, and after losing its server reconnects to another
//! one: the first retry is immediate, later ones back off up to a few seconds.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::settings::NatsServers;

/// Why NATS could not be reached at start-up.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach NATS at {servers} (is nats-server running with JetStream? `scripts/up` starts one)"
)]
pub struct NatsConnectError {
    /// The servers tried, passwords hidden.
    pub servers: String,
    #[source]
    pub source: async_nats::ConnectError,
}

/// Connects, naming the connection after the role so `nats server report connections` shows it.
///
/// # Errors
/// The server is unreachable or refuses the connection.
pub async fn connect(servers: &NatsServers, role: &str) -> Result<Client, NatsConnectError> {
    let role = role.to_owned();
    ConnectOptions::new()
        .name(format!("chatq-{role}"))
        .connection_timeout(Duration::from_secs(5))
        // Buffer for messages published while reconnecting; bounded, so memory stays bounded.
        .client_capacity(65_536)
        .event_callback(move |event| {
            let role = role.clone();
            async move {
                match event {
                    Event::Connected => tracing::info!(%role, "NATS connected"),
                    Event::Disconnected => {
                        tracing::warn!(%role, "NATS connection lost; reconnecting")
                    }
                    Event::SlowConsumer(sid) => {
                        tracing::warn!(%role, sid, "NATS subscription too slow; messages dropped")
                    }
                    other => tracing::info!(%role, event = %other, "NATS client event"),
                }
            }
        })
        .connect(servers.addrs())
        .await
        .map_err(|source| NatsConnectError {
            servers: servers.to_string(),
            source,
        })
}
