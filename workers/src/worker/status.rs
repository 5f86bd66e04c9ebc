//! What a worker says about itself, the grants it follows, and the endpoint it serves alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chatq_common::heartbeat::WorkerStatus;
use chatq_common::job::Lane;
use chatq_common::metrics as names;
use chatq_common::settings::LimitSettings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Worker;
use crate::leases::{Grant, RATE_UNITS};
use crate::limits::ProviderLimits;
use crate::provider::ProviderError;

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

/// Registers the worker's counters at zero (a worker may never see a dead letter or a provider
/// error, and an alert on their rate needs a series), and notes the fleet-wide limits configured.
pub(super) fn register_series(settings: &LimitSettings) {
    for call in names::PROVIDER_CALL_KINDS {
        for outcome in std::iter::once("ok").chain(ProviderError::KINDS) {
            metrics::counter!(names::PROVIDER_CALLS, "call" => call, "outcome" => outcome)
                .increment(0);
        }
    }
    metrics::counter!(names::PROVIDER_RATE_LIMITED).increment(0);
    for lane in Lane::ALL {
        metrics::counter!(names::DEAD_LETTERS, "lane" => lane.as_str()).increment(0);
    }
    for step in names::RECONCILER_STEPS {
        metrics::counter!(names::RECONCILER_JOBS, "step" => step).increment(0);
    }
    for result in names::WEBHOOK_RESULTS {
        metrics::counter!(names::WEBHOOK_DELIVERIES, "result" => result).increment(0);
    }
    for reason in names::WEBHOOK_FAILURE_REASONS {
        metrics::counter!(names::WEBHOOK_FAILED_ATTEMPTS, "reason" => reason).increment(0);
    }
    let configured = [
        ("rpm", settings.provider_rpm),
        ("tpm", settings.provider_tpm),
        ("max_concurrency", settings.provider_max_concurrency),
    ];
    for (limit, value) in configured {
        if let Some(value) = value {
            metrics::gauge!(names::PROVIDER_LIMIT, "limit" => limit).set(f64::from(value));
        }
    }
}

/// Applies every grant of capacity the fleet task's lease rounds make, and notes the fleet's size
/// and this worker's share of each limit (`max_concurrency`: the fleet-wide concurrency limit, if
/// set).
pub(super) async fn follow_fleet(
    mut membership: tokio::sync::watch::Receiver<crate::fleet::Membership>,
    mut grants: tokio::sync::watch::Receiver<Grant>,
    limits: Arc<ProviderLimits>,
    max_concurrency: Option<u32>,
    stop: CancellationToken,
) {
    loop {
        let size = membership.borrow_and_update().size();
        metrics::gauge!(names::FLEET_WORKERS).set(size as f64);
        limits.note_fleet_size(size);
        let grant = *grants.borrow_and_update();
        limits.apply(grant);
        metrics::gauge!(names::WORKER_LIMIT_SHARE, "limit" => "rate")
            .set(f64::from(grant.rate_units) / f64::from(RATE_UNITS));
        if let (Some(held), Some(max)) = (grant.concurrency, max_concurrency) {
            metrics::gauge!(names::WORKER_LIMIT_SHARE, "limit" => "concurrency")
                .set(f64::from(held) / f64::from(max.max(1)));
        }
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
