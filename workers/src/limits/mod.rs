//! The provider's limits, held for the whole fleet, and the worker's reaction to 429s.
//!
//! Three configured limits apply to the fleet as a whole: requests per minute
//! (`provider_rpm`), tokens per minute (`provider_tpm`) and requests in flight
//! (`provider_max_concurrency`). A worker uses only the capacity it holds a lease on
//! ([`crate::leases`]): a [`Grant`] of so many rate units (each `1/RATE_UNITS` of the rates) and
//! so many requests in flight, valid until a deadline. A call starts only under a valid grant;
//! one whose grant lapsed (the worker was paused, or could not renew) waits for a new one
//! ([`admission`]).
//!
//! - Requests: a GCRA limiter (`governor`) at the granted share of `rpm / 60` per second. A
//!   request may start up to half an interval after its turn without losing it: a timer that
//!   wakes a waiter a millisecond late would otherwise push every later turn back, and the fleet
//!   would run below its limit (6 % below at 100 requests/s, as measured). Never earlier than its
//!   turn, so over any one-second window the fleet makes at most `rpm / 60 + n` requests.
//! - Tokens: a budget refilled at the granted share of `tpm / 60` tokens per second
//!   ([`tokens`]). A call pays its whole estimate (prompt tokens + `max_tokens`, or
//!   [`DEFAULT_COMPLETION_ESTIMATE`]) before it starts, so a call larger than a second's share
//!   waits as long as its size needs; what the provider reports beyond the estimate is paid by
//!   the next calls.
//! - Concurrency: the worker's job slots ([`Slots`]) are the smallest of `worker_concurrency`, its
//!   granted requests in flight, and the adaptive limit below.
//!
//! Adaptive limits: when the provider answers 429 anyway (a limit nobody configured, or shared
//! with other clients), the worker cuts its request rate to 90 % of what the provider accepted
//! over the last two seconds (70 % of what it tried, if nothing was accepted; never below one
//! request a second) and halves its concurrency, at most once a second. After two quiet seconds
//! it raises both again every second: the rate by a quarter while below half the rate where the
//! 429s began, then by 5 %; concurrency by a quarter. Once past twice that rate, or the granted
//! share, the adaptive limits are lifted. The fleet settles just under the provider's real limit,
//! and a burst of 429s that stops costs seconds, not minutes.

mod adaptive;
mod admission;
mod limited;
mod priority;
mod rate;
mod tokens;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use chatq_common::settings::LimitSettings;
use tokio::sync::watch;

use self::adaptive::Adaptive;
pub use self::limited::LimitedProvider;
use self::priority::LanePriority;
pub use self::rate::REQUESTS_AHEAD;
use self::rate::{SharedLimiter, current, replace, request_limiter};
use self::tokens::TokenBudget;
use crate::leases::{Grant, RATE_UNITS};
use crate::slots::Slots;

/// Completion tokens assumed for a request that names no `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u32 = 256;

/// One worker's view of the provider limits.
pub struct ProviderLimits {
    rpm: Option<u32>,
    tpm: Option<u32>,
    worker_concurrency: usize,
    /// What this worker may use now, from the leases it holds.
    grant: watch::Sender<Grant>,
    /// Live workers as this worker last saw the fleet, for its heartbeat.
    fleet_size: AtomicUsize,
    requests: SharedLimiter,
    /// Present when `provider_tpm` is set.
    tokens: Option<TokenBudget>,
    adaptive_pace: SharedLimiter,
    adaptive: Mutex<Adaptive>,
    slots: Slots,
    /// Interactive calls take their turns ahead of batch calls.
    priority: LanePriority,
}

impl ProviderLimits {
    /// A worker's limits, holding nothing yet when a fleet-wide limit is set (its first lease
    /// round grants its share), everything otherwise.
    pub fn new(limits: &LimitSettings, worker_concurrency: usize) -> Arc<Self> {
        let leased = limits.provider_rpm.is_some()
            || limits.provider_tpm.is_some()
            || limits.provider_max_concurrency.is_some();
        let first = if leased {
            Grant::nothing(limits.provider_max_concurrency.is_some())
        } else {
            Grant::unlimited()
        };
        let limits = Arc::new(Self {
            rpm: limits.provider_rpm,
            tpm: limits.provider_tpm,
            worker_concurrency: worker_concurrency.max(1),
            grant: watch::channel(first).0,
            fleet_size: AtomicUsize::new(1),
            requests: RwLock::new(None),
            tokens: limits.provider_tpm.map(|_| TokenBudget::new()),
            adaptive_pace: RwLock::new(None),
            adaptive: Mutex::new(Adaptive {
                rate: None,
                concurrency: None,
                last_decrease: None,
                last_raise: Instant::now(),
                trouble_at: 0.0,
                starts: VecDeque::new(),
                accepted: VecDeque::new(),
            }),
            slots: Slots::new(worker_concurrency.max(1)),
            priority: LanePriority::default(),
        });
        limits.apply(first);
        limits
    }

    /// Live workers, as this worker last saw the fleet.
    pub fn fleet_size(&self) -> usize {
        self.fleet_size.load(Ordering::Relaxed)
    }

    pub fn note_fleet_size(&self, size: usize) {
        self.fleet_size.store(size.max(1), Ordering::Relaxed);
    }

    /// The grant in force.
    pub fn grant(&self) -> Grant {
        *self.grant.borrow()
    }

    /// This worker's share of the request and token rates (0 to 1).
    fn rate_share(&self) -> f64 {
        f64::from(self.grant().rate_units) / f64::from(RATE_UNITS)
    }

    /// The job slots of this worker, sized by these limits.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Uses a new grant: the rates and slots follow what it allows. Unchanged shares keep their
    /// limiters (and the calls waiting on them) as they are.
    pub fn apply(&self, grant: Grant) {
        let before = self.grant.send_replace(grant);
        if before.rate_units != grant.rate_units
            || self.rpm.is_some() && current(&self.requests).is_none()
        {
            let share = f64::from(grant.rate_units) / f64::from(RATE_UNITS);
            if let Some(rpm) = self.rpm {
                replace(
                    &self.requests,
                    request_limiter(share * f64::from(rpm) / 60.0),
                );
            }
            if let (Some(tpm), Some(budget)) = (self.tpm, &self.tokens) {
                // Saved up: a second's worth of the share, at least one default request.
                let per_second = share * f64::from(tpm) / 60.0;
                budget.set_rate(
                    per_second,
                    per_second.max(f64::from(DEFAULT_COMPLETION_ESTIMATE)),
                );
            }
        }
        self.resize_slots();
    }

    fn resize_slots(&self) {
        let share = self
            .grant()
            .concurrency
            .map_or(usize::MAX, |granted| granted as usize);
        let adaptive = self.lock_adaptive().concurrency.unwrap_or(usize::MAX);
        self.slots
            .set_limit(self.worker_concurrency.min(share).min(adaptive));
    }

    fn lock_adaptive(&self) -> std::sync::MutexGuard<'_, Adaptive> {
        self.adaptive.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chatq_common::job::Lane;

    use super::*;
    use crate::limits::adaptive::DECREASE;

    fn limits(rpm: Option<u32>, max_concurrency: Option<u32>) -> Arc<ProviderLimits> {
        let settings = LimitSettings {
            provider_rpm: rpm,
            provider_max_concurrency: max_concurrency,
            ..chatq_common::Settings::default().limits
        };
        ProviderLimits::new(&settings, 8)
    }

    fn granted(rate_units: u32, concurrency: Option<u32>) -> Grant {
        Grant {
            rate_units,
            concurrency,
            valid_until: Some(Instant::now() + Duration::from_secs(60)),
        }
    }

    #[tokio::test]
    async fn concurrency_follows_the_grant() {
        let limits = limits(None, Some(10));
        assert_eq!(limits.slots().limit(), 0, "nothing held yet: no job runs");
        limits.apply(granted(RATE_UNITS, Some(10)));
        assert_eq!(
            limits.slots().limit(),
            8,
            "the worker's own bound is smaller"
        );
        limits.apply(granted(RATE_UNITS, Some(4)));
        assert_eq!(limits.slots().limit(), 4);
    }

    #[tokio::test]
    async fn the_request_rate_is_the_fleet_share() {
        // Half of 1200 rpm: 10 requests a second.
        let limits = limits(Some(1200), None);
        limits.apply(granted(RATE_UNITS / 2, None));
        let started = Instant::now();
        for _ in 0..11 {
            limits.admit(1, Lane::Interactive).await;
        }
        // One at once, the next half an interval later (the lateness allowed to every turn),
        // then one every 100 ms: the eleventh starts 950 ms in.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(940), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_changed_share_starts_at_its_rate_without_a_burst() {
        // 1200 rpm: all of it is 20 requests a second, half of it 10 (one every 100 ms).
        let limits = limits(Some(1200), None);
        limits.apply(granted(RATE_UNITS, None));
        limits.admit(1, Lane::Interactive).await;
        // Leases moved: this worker now holds half. The request it just sent counts against the
        // new rate too, so the next one waits an interval of it rather than starting at once.
        limits.apply(granted(RATE_UNITS / 2, None));
        let started = Instant::now();
        limits.admit(1, Lane::Interactive).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        assert!(waited < Duration::from_millis(600), "{waited:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_interactive_call_goes_ahead_of_batch_calls_waiting_for_turns() {
        // 1200 rpm: 20 turns a second.
        let limits = limits(Some(1200), None);
        limits.apply(granted(RATE_UNITS, None));
        let batch_admitted = Arc::new(AtomicUsize::new(0));
        let batch: Vec<_> = (0..40)
            .map(|_| {
                let limits = limits.clone();
                let admitted = batch_admitted.clone();
                tokio::spawn(async move {
                    limits.admit(1, Lane::Batch).await;
                    admitted.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        // Forty batch lines wait for two seconds of turns; an interactive call then waits for
        // about one turn, not for theirs.
        while batch_admitted.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            let before = batch_admitted.load(Ordering::SeqCst);
            let waited = limits.admit(1, Lane::Interactive).await;
            let went_first = batch_admitted.load(Ordering::SeqCst) - before;
            assert!(waited < Duration::from_millis(250), "waited {waited:?}");
            assert!(went_first <= 2, "{went_first} batch lines went first");
        }
        for line in batch {
            line.await.unwrap();
        }
        assert_eq!(
            batch_admitted.load(Ordering::SeqCst),
            40,
            "every batch line had its turn"
        );
    }

    #[tokio::test]
    async fn a_call_waits_for_a_grant_and_not_past_one_that_lapsed() {
        let limits = limits(Some(6000), None);
        let admitted = tokio::time::timeout(
            Duration::from_millis(200),
            limits.admit(1, Lane::Interactive),
        )
        .await;
        assert!(admitted.is_err(), "no call starts before any lease is held");
        limits.apply(Grant {
            rate_units: RATE_UNITS,
            concurrency: None,
            valid_until: Some(Instant::now() - Duration::from_millis(1)),
        });
        let admitted = tokio::time::timeout(
            Duration::from_millis(200),
            limits.admit(1, Lane::Interactive),
        )
        .await;
        assert!(admitted.is_err(), "nor under a grant that has lapsed");
        let waiting = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.admit(1, Lane::Interactive).await })
        };
        limits.apply(granted(RATE_UNITS, None));
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a renewed grant lets the waiting call start")
            .unwrap();
    }

    #[tokio::test]
    async fn a_call_larger_than_a_second_of_tokens_waits_for_all_of_them() {
        // 6,000 tokens a minute: 100 a second, 256 saved up at most. The first call spends what
        // is saved; the second, larger than a second's share, waits for all of its 300 tokens.
        let settings = LimitSettings {
            provider_tpm: Some(6000),
            ..chatq_common::Settings::default().limits
        };
        let limits = ProviderLimits::new(&settings, 8);
        limits.apply(granted(RATE_UNITS, None));
        limits.admit(256, Lane::Interactive).await;
        let started = Instant::now();
        limits.admit(300, Lane::Interactive).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(2800), "{waited:?}");
        assert!(waited < Duration::from_millis(4500), "{waited:?}");
    }

    #[tokio::test]
    async fn a_429_halves_concurrency_and_cuts_the_rate() {
        let limits = limits(None, None);
        let held: Vec<_> = (0..6)
            .map(|_| limits.slots().try_acquire().unwrap())
            .collect();
        for _ in 0..20 {
            limits.admit(1, Lane::Interactive).await;
        }
        limits.rate_limited();
        let (rate, concurrency) = limits.adaptive();
        assert_eq!(concurrency, Some(3), "half the jobs in flight");
        // Twenty starts just now count as 80 a second (over the shortest span, a quarter second).
        assert!(
            rate.is_some_and(|r| (r - 80.0 * DECREASE).abs() < 1.0),
            "{rate:?}"
        );
        assert_eq!(limits.slots().limit(), 3);
        drop(held);
    }
}
