//! What a worker says about itself, the grants it follows, and the endpoint it serves alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chatq_common::heartbeat::WorkerStatus;
use chatq_common::metrics as names;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Worker;
use crate::limits::ProviderLimits;

impl Worker {
    /// What this worker says about itself at each heartbeat. In flight are the jobs running
    /// (`jobs`), not the slots held: an idle worker holds its free slots while it waits on a pull.
    pub(super) fn status_reporter(
        &self,
        jobs: &TaskTracker,
    ) -> Arc<dyn Fn() -> WorkerStatus + Send + Sync> {
        let jobs = jobs.clone();
        let id = self.ctx.worker_id.clone();
        let slots = self.limits.slots().clone();
        let limits = self.limits.clone();
        let processed = self.processed.clone();
        let configured = self.ctx.worker.concurrency;
        let started_at = time::OffsetDateTime::now_utc().unix_timestamp();
        let host = hostname();
        Arc::new(move || {
            let concurrency = slots.limit();
            let in_flight = jobs.len();
            metrics::gauge!(names::WORKER_SLOTS).set(concurrency as f64);
            metrics::gauge!(names::WORKER_IN_FLIGHT).set(in_flight as f64);
            WorkerStatus {
                id: id.clone(),
                host: host.clone(),
                pid: std::process::id(),
                concurrency,
                configured_concurrency: configured,
                in_flight,
                processed: processed.load(Ordering::Relaxed),
                fleet_size: limits.fleet_size(),
                started_at,
                last_heartbeat_ms: i64::try_from(
                    time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000,
                )
                .unwrap_or(i64::MAX),
            }
        })
    }
}

/// Applies every grant of capacity the fleet task's lease rounds make, and notes the fleet's size.
pub(super) async fn follow_fleet(
    mut membership: tokio::sync::watch::Receiver<crate::fleet::Membership>,
    mut grants: tokio::sync::watch::Receiver<crate::leases::Grant>,
    limits: Arc<ProviderLimits>,
    stop: CancellationToken,
) {
    loop {
        let size = membership.borrow_and_update().size();
        metrics::gauge!(names::FLEET_WORKERS).set(size as f64);
        limits.note_fleet_size(size);
        limits.apply(*grants.borrow_and_update());
        tokio::select! {
            changed = membership.changed() => if changed.is_err() { return },
            changed = grants.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// `/metrics` and `/healthz` for a worker without an ingress beside it.
pub(super) async fn serve_metrics(listener: tokio::net::TcpListener, stop: CancellationToken) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                chatq_common::metrics::install()
                    .map(|handle| chatq_common::metrics::render(&handle))
                    .unwrap_or_default()
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let served = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(error = %err, "the worker metrics server stopped");
    }
}

pub(super) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}
