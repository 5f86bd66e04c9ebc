//! Prometheus metrics: every name chatq exports, described in one place, and the process-wide
//! recorder that `/metrics` renders.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `chatq_http_requests_total` | counter | `route`, `status` |
//! | `chatq_http_request_duration_seconds` | histogram | `route` |
//! | `chatq_queue_pending_jobs` | gauge | `lane` |
//! | `chatq_queue_in_flight_jobs` | gauge | `lane` |
//! | `chatq_queue_redelivered_jobs` | gauge | `lane` |
//! | `chatq_jobs_rejected_total` | counter | `reason` (`queue_full`, `key_rate_limited`) |
//! | `chatq_event_streams_open` | gauge | |
//! | `chatq_event_streams_max` | gauge | |
//! | `chatq_worker_in_flight_jobs` | gauge | |
//! | `chatq_worker_slots` | gauge | |
//! | `chatq_fleet_workers` | gauge | |
//! | `chatq_worker_limit_share` | gauge | `limit` (`rate`, `concurrency`) |
//! | `chatq_provider_limit` | gauge | `limit` (`rpm`, `tpm`, `max_concurrency`) |
//! | `chatq_jobs_finished_total` | counter | `lane`, `status` |
//! | `chatq_job_queue_wait_seconds` | histogram | `lane` |
//! | `chatq_provider_ttft_seconds` | histogram | |
//! | `chatq_provider_duration_seconds` | histogram | |
//! | `chatq_provider_rate_limited_total` | counter | |
//! | `chatq_provider_calls_total` | counter | `call` (`chat`; `embedding`: the semantic cache's), `outcome` (`ok`, or the error: `rate_limited`, `server_error`, …) |
//! | `chatq_rate_limiter_wait_seconds` | histogram | |
//! | `chatq_dead_letters_total` | counter | `lane` |
//! | `chatq_reconciler_jobs_total` | counter | `step` (`published`, `abandoned`, `stream_lost`, `lost`) |
//! | `chatq_cache_lookups_total` | counter | `tier` (`memory`, `shared`), `result` (`hit`, `miss`) |
//! | `chatq_cache_coalesced_total` | counter | `scope` (`process`, `fleet`) |
//! | `chatq_cache_evictions_total` | counter | `reason` (`feedback`, `size`, `expired`) |
//! | `chatq_cache_memory_bytes` | gauge | |
//! | `chatq_cache_provider_calls_saved_total` | counter | |
//! | `chatq_history_messages_total` | counter | `source` (`postgres`: read by a claim; `memory`: a worker's window cache) |
//! | `chatq_webhook_deliveries_total` | counter | `result` (`delivered`, `failed`: given up after its retries) |
//! | `chatq_webhook_failed_attempts_total` | counter | `reason` (`status`, `timeout`, `connect`, `refused_target`, `other`) |
//! | `chatq_webhook_pending_deliveries` | gauge | |
//! | `chatq_webhook_deliveries_in_flight` | gauge | |
//! | `chatq_webhook_delivery_latency_seconds` | histogram | |
//!
//! Counters a process may never increment (dead letters, provider errors, the reconciler's
//! steps) are registered at zero when the role starts ([`register_ingress`], and the worker's
//! own list), so a rule's `rate()` or `increase()` sees a series from the first scrape.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "chatq_http_requests_total";
pub const HTTP_DURATION: &str = "chatq_http_request_duration_seconds";
pub const QUEUE_PENDING: &str = "chatq_queue_pending_jobs";
pub const QUEUE_IN_FLIGHT: &str = "chatq_queue_in_flight_jobs";
pub const QUEUE_REDELIVERED: &str = "chatq_queue_redelivered_jobs";
pub const JOBS_REJECTED: &str = "chatq_jobs_rejected_total";
pub const EVENT_STREAMS_OPEN: &str = "chatq_event_streams_open";
pub const EVENT_STREAMS_MAX: &str = "chatq_event_streams_max";
pub const WORKER_IN_FLIGHT: &str = "chatq_worker_in_flight_jobs";
pub const WORKER_SLOTS: &str = "chatq_worker_slots";
pub const FLEET_WORKERS: &str = "chatq_fleet_workers";
pub const WORKER_LIMIT_SHARE: &str = "chatq_worker_limit_share";
pub const PROVIDER_LIMIT: &str = "chatq_provider_limit";
pub const JOBS_FINISHED: &str = "chatq_jobs_finished_total";
pub const QUEUE_WAIT: &str = "chatq_job_queue_wait_seconds";
pub const PROVIDER_TTFT: &str = "chatq_provider_ttft_seconds";
pub const PROVIDER_DURATION: &str = "chatq_provider_duration_seconds";
pub const PROVIDER_RATE_LIMITED: &str = "chatq_provider_rate_limited_total";
pub const PROVIDER_CALLS: &str = "chatq_provider_calls_total";
pub const RATE_LIMITER_WAIT: &str = "chatq_rate_limiter_wait_seconds";
pub const DEAD_LETTERS: &str = "chatq_dead_letters_total";
pub const RECONCILER_JOBS: &str = "chatq_reconciler_jobs_total";
pub const CACHE_LOOKUPS: &str = "chatq_cache_lookups_total";
pub const CACHE_COALESCED: &str = "chatq_cache_coalesced_total";
pub const CACHE_EVICTIONS: &str = "chatq_cache_evictions_total";
pub const CACHE_MEMORY_BYTES: &str = "chatq_cache_memory_bytes";
pub const CACHE_CALLS_SAVED: &str = "chatq_cache_provider_calls_saved_total";
pub const HISTORY_MESSAGES: &str = "chatq_history_messages_total";
pub const WEBHOOK_DELIVERIES: &str = "chatq_webhook_deliveries_total";
pub const WEBHOOK_FAILED_ATTEMPTS: &str = "chatq_webhook_failed_attempts_total";
pub const WEBHOOK_PENDING: &str = "chatq_webhook_pending_deliveries";
pub const WEBHOOK_IN_FLIGHT: &str = "chatq_webhook_deliveries_in_flight";
pub const WEBHOOK_LATENCY: &str = "chatq_webhook_delivery_latency_seconds";

/// The reasons of [`JOBS_REJECTED`].
pub const REJECTED_REASONS: [&str; 2] = ["queue_full", "key_rate_limited"];
/// The steps of [`RECONCILER_JOBS`], as the reconciler's pass reports them.
pub const RECONCILER_STEPS: [&str; 4] = ["published", "abandoned", "stream_lost", "lost"];

/// What a provider call was for, as the `call` label of [`PROVIDER_CALLS`] names it: a reply
/// (`chat`), or the semantic cache's embedding of a request (`embedding`).
pub const PROVIDER_CALL_KINDS: [&str; 2] = ["chat", "embedding"];

/// The results of [`WEBHOOK_DELIVERIES`].
pub const WEBHOOK_RESULTS: [&str; 2] = ["delivered", "failed"];
/// The reasons of [`WEBHOOK_FAILED_ATTEMPTS`].
pub const WEBHOOK_FAILURE_REASONS: [&str; 5] =
    ["status", "timeout", "connect", "refused_target", "other"];

/// Latency buckets, in seconds: from a millisecond to ten minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often the recorder folds the histogram samples recorded since into its buckets. Until
/// then each sample is kept (16 bytes of heap), so a process nobody scrapes kept them all: a
/// worker at 170 jobs a second grew by about 0.6 MB a minute.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder (once; later calls return the same handle). `None` if
/// another recorder was installed first, in which case `/metrics` answers empty.
///
/// Called within a tokio runtime, it also starts the recorder's upkeep on it, every
/// [`UPKEEP_EVERY`]: a scrape folds the samples in too, but nothing says anyone scrapes.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(keep_up(handle.clone()));
            }
            Some(handle)
        })
        .clone()
}

/// Runs the recorder's upkeep every [`UPKEEP_EVERY`], for as long as the runtime runs.
async fn keep_up(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// Registers the ingress's counters at zero and notes its SSE limit.
pub fn register_ingress(max_event_streams: usize) {
    for reason in REJECTED_REASONS {
        metrics::counter!(JOBS_REJECTED, "reason" => reason).increment(0);
    }
    metrics::gauge!(EVENT_STREAMS_MAX).set(max_event_streams as f64);
}

/// The text exposition of every metric.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request (to the first byte of a stream)."
    );
    describe_gauge!(
        QUEUE_PENDING,
        "Jobs waiting in the queue, not yet delivered to a worker."
    );
    describe_gauge!(
        QUEUE_IN_FLIGHT,
        "Jobs delivered to a worker and not yet acknowledged."
    );
    describe_gauge!(
        QUEUE_REDELIVERED,
        "Jobs in flight that were delivered more than once."
    );
    describe_counter!(
        JOBS_REJECTED,
        "Requests refused at the door: full queue (503) or key rate limit (429)."
    );
    describe_gauge!(
        EVENT_STREAMS_OPEN,
        "Server-sent event streams this ingress holds open."
    );
    describe_gauge!(
        EVENT_STREAMS_MAX,
        "Most server-sent event streams this ingress holds open (max_event_streams)."
    );
    describe_gauge!(WORKER_IN_FLIGHT, "Jobs this worker is running.");
    describe_gauge!(
        WORKER_SLOTS,
        "Jobs this worker may run at once now (after fleet shares and 429s)."
    );
    describe_gauge!(
        FLEET_WORKERS,
        "Live workers, as this worker sees the fleet."
    );
    describe_gauge!(
        WORKER_LIMIT_SHARE,
        "Share (0 to 1) of each fleet-wide provider limit this worker holds leases for."
    );
    describe_gauge!(
        PROVIDER_LIMIT,
        "The fleet-wide provider limits configured (unset limits are absent)."
    );
    describe_counter!(
        JOBS_FINISHED,
        "Jobs this worker finished, by lane and final status."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from a job's creation to a worker starting it."
    );
    describe_histogram!(
        PROVIDER_TTFT,
        Unit::Seconds,
        "Time from calling the provider to its first token."
    );
    describe_histogram!(
        PROVIDER_DURATION,
        Unit::Seconds,
        "Time from calling the provider to the end of its reply."
    );
    describe_counter!(PROVIDER_RATE_LIMITED, "Provider answers with HTTP 429.");
    describe_counter!(
        PROVIDER_CALLS,
        "Provider calls, by what they were for (chat, embedding) and outcome: ok, or the kind of error."
    );
    describe_histogram!(
        RATE_LIMITER_WAIT,
        Unit::Seconds,
        "Time a call waited for the provider limits before it started."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Jobs that failed for good and were copied to the dead-letter stream."
    );
    describe_counter!(
        RECONCILER_JOBS,
        "Jobs the reconciler put back in the queue, by step: published again, abandoned by a dead worker, stream lost, copy lost."
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Reply cache lookups, by tier (memory, shared) and result (hit, miss)."
    );
    describe_counter!(
        CACHE_COALESCED,
        "Requests answered by an identical request's provider call, in this process or on another worker."
    );
    describe_counter!(
        HISTORY_MESSAGES,
        "Messages of conversation turns' prompt windows, by where they came from: read from Postgres, or kept by the worker from the conversation's previous turn."
    );
    describe_counter!(
        CACHE_EVICTIONS,
        "Replies dropped from the memory tier, by reason: negative feedback, size bound, TTL."
    );
    describe_gauge!(
        CACHE_MEMORY_BYTES,
        Unit::Bytes,
        "Bytes of replies this worker's memory tier holds."
    );
    describe_counter!(
        CACHE_CALLS_SAVED,
        "Provider calls the reply cache saved (hits of either tier, and coalesced requests)."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook deliveries this worker ended: delivered (a 2xx), or failed after every retry."
    );
    describe_counter!(
        WEBHOOK_FAILED_ATTEMPTS,
        "Webhook delivery attempts that failed (and will be retried, or given up), by reason."
    );
    describe_gauge!(
        WEBHOOK_PENDING,
        "Webhook deliveries in the outbox not yet delivered nor given up (the whole fleet's)."
    );
    describe_gauge!(
        WEBHOOK_IN_FLIGHT,
        "Webhook deliveries this worker is sending now."
    );
    describe_histogram!(
        WEBHOOK_LATENCY,
        Unit::Seconds,
        "Time from a result's commit to its webhook's delivery (a 2xx), retries included."
    );
}
