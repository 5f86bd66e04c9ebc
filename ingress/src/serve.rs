//! The HTTP server loop, with the limits a public listener needs on each connection.
//!
//! `axum::serve` waits for a client's request headers without end and accepts any number of
//! connections, so a few hundred clients that send half a request line each hold an ingress
//! open forever. Here:
//!
//! - at most `max_connections` connections are open at once; beyond it the ingress stops
//!   accepting, and new connections wait in the listen backlog until one closes;
//! - a connection has `header_read_timeout_secs` to send each request's headers (counted from
//!   the end of the previous request on a kept-alive connection), or it is closed;
//! - a body must arrive within `body_read_timeout_secs` (408; `body_limit`, which reads every
//!   body before its handler).
//!
//! Shutdown is the same as `axum::serve`'s: stop accepting, let each connection finish the
//! request it is serving, and return once every connection has closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

/// The limits on each connection, from the ingress settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits for every connection
/// to finish the request it is serving.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut make_service: IntoMakeServiceWithConnectInfo<Router, SocketAddr> =
        router.into_make_service_with_connect_info::<SocketAddr>();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    // Cancelled once accepting has stopped: each connection then finishes its request and closes.
    let draining = CancellationToken::new();
    loop {
        // A slot first: at the cap, connections wait in the backlog instead of being accepted.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pass, rather than spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        drop(stream.set_nodelay(true));
        let Ok(service) = make_service.call(peer).await;
        let service =
            TowerToHyperService::new(service.map_request(|request: hyper::Request<Incoming>| {
                request.map(axum::body::Body::new)
            }));
        let draining = draining.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = draining.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            drop(connection.await);
        });
    }
    drop(listener);
    draining.cancel();
    connections.close();
    connections.wait().await;
}
