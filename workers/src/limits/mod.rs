//! The provider's limits, held for the whole fleet, and the worker's reaction to 429s.
//!
//! Three configured limits apply to the fleet as a whole: requests per minute
//! (`provider_rpm`), tokens per minute (`provider_tpm`) and requests in flight
//! (`provider_max_concurrency`). Each worker enforces its share ([`crate::fleet::Membership`]):
//! rates are divided evenly, concurrency in whole requests. Adding a worker shrinks every share, so
//! the fleet's total stays the configured one.
//!
//! - Requests: a GCRA limiter (`governor`) at `rpm / 60 / n` per second. A request may start up
//!   to half an interval after its turn without losing it: a timer that wakes a waiter a
//!   millisecond late would otherwise push every later turn back, and the fleet would run below
//!   its limit (6 % below at 100 requests/s, as measured). Never earlier than its turn, so over
//!   any one-second window the fleet makes at most `rpm / 60 + n` requests.
//! - Tokens: a GCRA limiter at `tpm / 60 / n` tokens per second. A call takes its estimate
//!   (prompt tokens + `max_tokens`, or [`DEFAULT_COMPLETION_ESTIMATE`]) before it starts; what the
//!   provider reports beyond the estimate is taken from the next calls.
//! - Concurrency: the worker's job slots ([`Slots`]) are the smallest of `worker_concurrency`, its
//!   share of `provider_max_concurrency`, and the adaptive limit below.
//!
//! Adaptive limits: when the provider answers 429 anyway (a limit nobody configured, or shared
//! with other clients), the worker cuts its request rate to 90 % of what the provider accepted
//! over the last two seconds (70 % of what it tried, if nothing was accepted; never below one
//! request a second) and halves its concurrency, at most once a second. After two quiet seconds it raises both again every second: the rate by a quarter while
//! below half the rate where the 429s began, then by 5 %; concurrency by a quarter. Once past
//! twice that rate, or the configured share, the adaptive limits are lifted. The fleet settles
//! just under the provider's real limit, and a burst of 429s that stops costs seconds, not minutes.

mod adaptive;
mod limited;
mod rate;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use chatq_common::settings::LimitSettings;

use self::adaptive::Adaptive;
pub use self::limited::LimitedProvider;
use self::rate::{SharedLimiter, current, limiter, replace, request_limiter, wait_turn};
use crate::fleet::Membership;
use crate::slots::Slots;

/// Completion tokens assumed for a request that names no `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u32 = 256;

/// One worker's view of the provider limits.
pub struct ProviderLimits {
    rpm: Option<u32>,
    tpm: Option<u32>,
    max_concurrency: Option<u32>,
    worker_concurrency: usize,
    membership: Mutex<Membership>,
    requests: SharedLimiter,
    tokens: SharedLimiter,
    /// Largest token count one call can take at once (the token limiter's burst).
    token_burst: Mutex<u32>,
    /// Tokens used beyond estimates, taken from the next call.
    token_debt: Mutex<u32>,
    adaptive_pace: SharedLimiter,
    adaptive: Mutex<Adaptive>,
    slots: Slots,
}

impl ProviderLimits {
    pub fn new(limits: &LimitSettings, worker_concurrency: usize, worker_id: &str) -> Arc<Self> {
        let limits = Arc::new(Self {
            rpm: limits.provider_rpm,
            tpm: limits.provider_tpm,
            max_concurrency: limits.provider_max_concurrency,
            worker_concurrency: worker_concurrency.max(1),
            membership: Mutex::new(Membership::alone(worker_id)),
            requests: RwLock::new(None),
            tokens: RwLock::new(None),
            token_burst: Mutex::new(u32::MAX),
            token_debt: Mutex::new(0),
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
        });
        limits.rebalance(Membership::alone(worker_id));
        limits
    }

    /// Live workers, as this worker last saw the fleet.
    pub fn fleet_size(&self) -> usize {
        self.membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .size()
    }

    /// The job slots of this worker, sized by these limits.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Recomputes this worker's shares for a new fleet.
    pub fn rebalance(&self, membership: Membership) {
        if let Some(rpm) = self.rpm {
            replace(
                &self.requests,
                request_limiter(membership.share(f64::from(rpm)) / 60.0),
            );
        }
        if let Some(tpm) = self.tpm {
            // A burst of a second's worth of the share, at least one default request, so that a
            // single call can always go through eventually.
            let per_second = membership.share(f64::from(tpm)) / 60.0;
            let burst = (per_second.ceil() as u32).max(DEFAULT_COMPLETION_ESTIMATE);
            *self
                .token_burst
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = burst;
            replace(&self.tokens, limiter(per_second, burst));
        }
        *self
            .membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = membership;
        self.resize_slots();
    }

    fn resize_slots(&self) {
        let membership = self
            .membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let share = self
            .max_concurrency
            .map_or(usize::MAX, |total| membership.integer_share(total) as usize);
        let adaptive = self.lock_adaptive().concurrency.unwrap_or(usize::MAX);
        self.slots
            .set_limit(self.worker_concurrency.min(share).min(adaptive));
    }

    fn lock_adaptive(&self) -> std::sync::MutexGuard<'_, Adaptive> {
        self.adaptive.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a call estimated at `tokens` may start. Returns how long it waited.
    pub async fn admit(&self, tokens: u32) -> Duration {
        let started = Instant::now();
        self.maybe_raise();
        wait_turn(&self.requests).await;
        wait_turn(&self.adaptive_pace).await;
        if let Some(limiter) = current(&self.tokens) {
            let debt = std::mem::take(
                &mut *self
                    .token_debt
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            let burst = *self
                .token_burst
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let wanted = tokens.saturating_add(debt).clamp(1, burst);
            if let Some(n) = NonZeroU32::new(wanted)
                && limiter.until_n_ready(n).await.is_err()
            {
                // Cannot happen: `wanted` is within the burst.
                tracing::debug!(tokens = wanted, "token estimate above the limiter's burst");
            }
        }
        let mut adaptive = self.lock_adaptive();
        let now = Instant::now();
        adaptive.starts.push_back(now);
        // Keeps both windows to their last two seconds.
        Self::achieved_rates(&mut adaptive, now);
        drop(adaptive);
        let waited = started.elapsed();
        metrics::histogram!(chatq_common::metrics::RATE_LIMITER_WAIT).record(waited.as_secs_f64());
        waited
    }

    /// Takes tokens the provider reported beyond the estimate from later calls.
    pub fn settle_tokens(&self, estimated: u32, used: u32) {
        if self.tpm.is_some() && used > estimated {
            let mut debt = self
                .token_debt
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *debt = debt.saturating_add(used - estimated);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::adaptive::DECREASE;

    fn limits(rpm: Option<u32>, max_concurrency: Option<u32>) -> Arc<ProviderLimits> {
        let settings = LimitSettings {
            provider_rpm: rpm,
            provider_max_concurrency: max_concurrency,
            ..chatq_common::Settings::default().limits
        };
        ProviderLimits::new(&settings, 8, "a")
    }

    #[tokio::test]
    async fn concurrency_shares_follow_the_fleet() {
        let limits = limits(None, Some(10));
        assert_eq!(
            limits.slots().limit(),
            8,
            "alone: the worker's own bound is smaller"
        );
        limits.rebalance(Membership {
            members: vec!["a".into(), "b".into(), "c".into()],
            index: 0,
        });
        assert_eq!(limits.slots().limit(), 4);
        limits.rebalance(Membership {
            members: vec!["a".into(), "b".into(), "c".into()],
            index: 2,
        });
        assert_eq!(limits.slots().limit(), 3);
    }

    #[tokio::test]
    async fn the_request_rate_is_the_fleet_share() {
        // 1200 rpm over two workers: 10 requests a second each.
        let limits = limits(Some(1200), None);
        limits.rebalance(Membership {
            members: vec!["a".into(), "b".into()],
            index: 0,
        });
        let started = Instant::now();
        for _ in 0..11 {
            limits.admit(1).await;
        }
        // One at once, the next half an interval later (the lateness allowed to every turn),
        // then one every 100 ms: the eleventh starts 950 ms in.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(940), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_429_halves_concurrency_and_cuts_the_rate() {
        let limits = limits(None, None);
        let held: Vec<_> = (0..6)
            .map(|_| limits.slots().try_acquire().unwrap())
            .collect();
        for _ in 0..20 {
            limits.admit(1).await;
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
