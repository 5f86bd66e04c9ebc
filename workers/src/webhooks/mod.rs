//! Delivering completion webhooks from the outbox, beside the jobs and never in their way.
//!
//! Every worker runs one [`Dispatcher`]. Every `CHATQ_WEBHOOK_POLL_INTERVAL_MS` it leases as many
//! due deliveries as it has free delivery slots (`CHATQ_WEBHOOK_MAX_CONCURRENT_DELIVERIES`), and
//! sends each in a task of its own ([`send`]); while claims come back full, it claims again each
//! time a slot frees, so a backlog drains as fast as the slots turn over. Workers share the outbox without waiting on each
//! other (the claim skips rows another holds). A job never waits for a delivery: deliveries have
//! their own slots, their own HTTP client with short timeouts, and their own database statements
//! after the result was committed; a receiver that never answers holds one delivery slot until
//! the timeout, nothing else.
//!
//! Each attempt carries the event's id as `webhook-id`, the same on every retry, so a receiver
//! can drop a repeat. A 2xx marks the delivery `delivered`. Anything else is retried after an
//! exponential back-off with jitter ([`backoff`]), or after the `Retry-After` the receiver
//! answered with if that is longer, until `CHATQ_WEBHOOK_RETRY_FOR_SECS` after
//! the event, when it ends `failed`. A worker that dies mid-delivery holds its lease until it
//! runs out (one attempt's timeout and a margin); then another worker sends it again: at least
//! once.

pub mod send;

use std::sync::Arc;
use std::time::Duration;

use chatq_common::db::Db;
use chatq_common::db::webhooks::{self as outbox, Attempted, DueDelivery, Settled};
use chatq_common::metrics as names;
use chatq_common::settings::WebhookSettings;
use rand::Rng as _;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::send::Sender;

/// Seconds a lease outlasts one attempt's timeout.
const LEASE_MARGIN_SECS: u64 = 10;
/// How often the `pending` gauge is refreshed.
const PENDING_EVERY: Duration = Duration::from_secs(15);

/// The wait before attempt `attempt + 1`, after `attempt` failed: `base · 2^(attempt-1)`, at
/// most `max`, of which a random half is taken off (so receivers that failed together are not
/// retried together).
pub fn backoff(attempt: i32, base: Duration, max: Duration) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let full = base.saturating_mul(1 << doublings).min(max);
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// Sends the deliveries due, on every worker.
#[derive(Clone)]
pub struct Dispatcher {
    pool: Db,
    settings: WebhookSettings,
    sender: Sender,
}

impl Dispatcher {
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(pool: Db, settings: WebhookSettings) -> anyhow::Result<Self> {
        let sender = Sender::new(&settings)?;
        Ok(Self {
            pool,
            settings,
            sender,
        })
    }

    /// Claims and sends due deliveries until `shutdown`. Deliveries under way then are dropped:
    /// their leases run out and another worker (or this one, restarted) sends them again.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.max_concurrent.max(1)));
        let deliveries = TaskTracker::new();
        let every = Duration::from_millis(self.settings.poll_interval_ms.max(1));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending_checked = tokio::time::Instant::now() - PENDING_EVERY;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if pending_checked.elapsed() >= PENDING_EVERY {
                pending_checked = tokio::time::Instant::now();
                if let Ok(pending) = outbox::pending(&self.pool).await {
                    metrics::gauge!(names::WEBHOOK_PENDING).set(pending as f64);
                }
            }
            // Claim again while claims come back full (more may be due), as soon as a slot is
            // free: deliveries then go out as fast as the slots turn over, not one claim a tick.
            loop {
                let first = tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                };
                let free = slots.available_permits() + 1;
                let claimed = tokio::select! {
                    () = shutdown.cancelled() => break,
                    claimed = outbox::claim_due(&self.pool, free as i64, self.lease_secs()) => claimed,
                };
                let due = match claimed {
                    Ok(due) => due,
                    Err(err) => {
                        chatq_common::telemetry::log_error_chain(
                            "cannot claim webhook deliveries",
                            &err,
                        );
                        break;
                    }
                };
                let full = due.len() == free;
                let mut first = Some(first);
                for delivery in due {
                    let slot = match first.take() {
                        Some(slot) => slot,
                        None => match slots.clone().try_acquire_owned() {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                    };
                    let this = self.clone();
                    let stop = shutdown.clone();
                    deliveries.spawn(async move {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = this.deliver(delivery) => {}
                        }
                        drop(slot);
                    });
                }
                if !full {
                    break;
                }
            }
        }
        deliveries.close();
        deliveries.wait().await;
    }

    fn lease_secs(&self) -> f64 {
        (self.settings.connect_timeout_secs + self.settings.timeout_secs + LEASE_MARGIN_SECS) as f64
    }

    /// One attempt, and its outcome recorded.
    #[tracing::instrument(skip_all, fields(event_id = %delivery.id, event = %delivery.event, attempt = delivery.attempt))]
    async fn deliver(&self, delivery: DueDelivery) {
        let in_flight = metrics::gauge!(names::WEBHOOK_IN_FLIGHT);
        in_flight.increment(1.0);
        let sent = self.sender.send(&delivery).await;
        in_flight.decrement(1.0);
        let outcome = match &sent {
            Ok(()) => Attempted::Delivered,
            Err(err) => {
                metrics::counter!(names::WEBHOOK_FAILED_ATTEMPTS, "reason" => err.reason())
                    .increment(1);
                let s = &self.settings;
                let longest = Duration::from_secs(s.retry_max_delay_secs);
                let backoff = backoff(
                    delivery.attempt,
                    Duration::from_millis(s.retry_base_ms),
                    longest,
                );
                // A receiver that asks for a wait (429 or 503 with `Retry-After`) gets at least
                // that, up to the longest back-off.
                let asked = err.retry_after().unwrap_or_default().min(longest);
                Attempted::Failed {
                    error: err.to_string(),
                    retry_in_secs: backoff.max(asked).as_secs_f64(),
                    retry_for_secs: s.retry_for_secs as f64,
                }
            }
        };
        match outbox::settle(&self.pool, delivery.id, delivery.attempt, &outcome).await {
            Ok(Settled::Delivered) => {
                metrics::counter!(names::WEBHOOK_DELIVERIES, "result" => "delivered").increment(1);
                let latency = OffsetDateTime::now_utc() - delivery.created_at;
                metrics::histogram!(names::WEBHOOK_LATENCY)
                    .record(latency.as_seconds_f64().max(0.0));
            }
            Ok(Settled::Failed) => {
                metrics::counter!(names::WEBHOOK_DELIVERIES, "result" => "failed").increment(1);
                if let Err(err) = &sent {
                    tracing::warn!(error = %err, "webhook delivery given up after its retries");
                }
            }
            Ok(Settled::Retrying) => {
                if let Err(err) = &sent {
                    tracing::info!(error = %err, "webhook delivery failed; it will be retried");
                }
            }
            Ok(Settled::Superseded) => {}
            // Unrecorded: the lease runs out and the delivery is attempted again.
            Err(err) => chatq_common::telemetry::log_error_chain(
                "cannot record a webhook delivery's outcome",
                &err,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(3600);
        for (attempt, full) in [
            (1, 5),
            (2, 10),
            (3, 20),
            (10, 2560),
            (11, 3600),
            (400, 3600),
        ] {
            let wait = backoff(attempt, base, max);
            let full = Duration::from_secs(full);
            assert!(
                wait >= full / 2 && wait <= full,
                "attempt {attempt}: {wait:?}"
            );
        }
    }
}
