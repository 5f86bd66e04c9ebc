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

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chatq_common::chat::estimate_tokens;
use chatq_common::settings::LimitSettings;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::fleet::Membership;
use crate::provider::{
    Provider, ProviderError, ProviderReply, ProviderRequest, ReplyStream, StreamItem,
};
use crate::slots::Slots;

/// Completion tokens assumed for a request that names no `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u32 = 256;
/// After a 429, the rate becomes this fraction of the achieved one.
const DECREASE: f64 = 0.7;
/// The adaptive rate never goes below this (requests per second): a provider that answers 429 at
/// random, whatever the rate, must not stall the worker.
const MIN_RATE: f64 = 1.0;
/// Quiet time before a limit is raised again, and between raises.
const RECOVER_AFTER: Duration = Duration::from_secs(2);
const RAISE_EVERY: Duration = Duration::from_secs(1);

/// A rate limiter that can be replaced while calls wait on the old one.
type SharedLimiter = RwLock<Option<Arc<DefaultDirectRateLimiter>>>;

/// A request-rate limiter counts in cells, this many per request, so that its tolerance can be a
/// fraction of a request's interval.
const CELLS_PER_REQUEST: u32 = 16;
/// How late, in cells, a request may start without losing its turn: half an interval.
const LATE_CELLS: u32 = CELLS_PER_REQUEST / 2;
const REQUEST_CELLS: NonZeroU32 = match NonZeroU32::new(CELLS_PER_REQUEST) {
    Some(cells) => cells,
    None => NonZeroU32::MIN,
};

/// A limiter of `per_second` requests.
fn request_limiter(per_second: f64) -> Option<Arc<DefaultDirectRateLimiter>> {
    limiter(
        per_second * f64::from(CELLS_PER_REQUEST),
        CELLS_PER_REQUEST + LATE_CELLS,
    )
}

fn limiter(per_second: f64, burst: u32) -> Option<Arc<DefaultDirectRateLimiter>> {
    if !per_second.is_finite() || per_second <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
    Some(Arc::new(RateLimiter::direct(quota)))
}

fn current(limiter: &SharedLimiter) -> Option<Arc<DefaultDirectRateLimiter>> {
    limiter
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Waits for a turn under the limiter in place. If it is replaced meanwhile (a rebalance, an
/// adaptive step), waits again under the new one: calls still waiting on an old limiter must not
/// run beside the new one's, or the two rates would add up.
async fn wait_turn(limiter: &SharedLimiter) {
    while let Some(current_limiter) = current(limiter) {
        // Within the burst by construction, so never refused for capacity.
        let _within_burst = current_limiter.until_n_ready(REQUEST_CELLS).await;
        match current(limiter) {
            Some(now) if Arc::ptr_eq(&now, &current_limiter) => return,
            None => return,
            Some(_) => {}
        }
    }
}

fn replace(limiter: &SharedLimiter, next: Option<Arc<DefaultDirectRateLimiter>>) {
    *limiter.write().unwrap_or_else(PoisonError::into_inner) = next;
}

/// What the worker has learnt from 429s.
#[derive(Debug)]
struct Adaptive {
    /// Requests per second this worker allows itself; `None` when no 429 asked for less.
    rate: Option<f64>,
    /// Jobs this worker allows itself; `None` when no 429 asked for less.
    concurrency: Option<usize>,
    last_decrease: Option<Instant>,
    last_raise: Instant,
    /// The rate achieved when the last 429 came: recovery slows down near it.
    trouble_at: f64,
    /// When recent calls started, for the achieved rate.
    starts: VecDeque<Instant>,
    /// When recent calls were accepted (answered with anything but 429): the rate the provider
    /// actually lets through.
    accepted: VecDeque<Instant>,
}

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

    /// Requests per second this worker started recently (over up to two seconds), and how many
    /// of those a second the provider accepted.
    fn achieved_rates(adaptive: &mut Adaptive, now: Instant) -> (f64, f64) {
        let window = Duration::from_secs(2);
        for times in [&mut adaptive.starts, &mut adaptive.accepted] {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) > window)
            {
                times.pop_front();
            }
        }
        let Some(oldest) = adaptive.starts.front() else {
            return (0.0, 0.0);
        };
        let span = now.duration_since(*oldest).as_secs_f64().max(0.25);
        (
            adaptive.starts.len() as f64 / span,
            adaptive.accepted.len() as f64 / span,
        )
    }

    /// The provider accepted a call (answered with anything but 429).
    pub fn accepted(&self) {
        self.lock_adaptive().accepted.push_back(Instant::now());
    }

    /// The provider answered 429: slow down.
    pub fn rate_limited(&self) {
        metrics::counter!(chatq_common::metrics::PROVIDER_RATE_LIMITED).increment(1);
        let mut adaptive = self.lock_adaptive();
        let now = Instant::now();
        if adaptive
            .last_decrease
            .is_some_and(|t| now.duration_since(t) < RAISE_EVERY)
        {
            return;
        }
        let (achieved, accepted) = Self::achieved_rates(&mut adaptive, now);
        // Just under what the provider let through, if it let anything through; otherwise a
        // cut of what was tried.
        let target = if accepted > 0.0 {
            accepted * 0.9
        } else {
            achieved * DECREASE
        };
        let rate = adaptive
            .rate
            .map_or(target, |rate| rate.min(target))
            .max(MIN_RATE);
        let in_use = self.slots.in_use().max(1);
        let concurrency = adaptive
            .concurrency
            .unwrap_or(in_use)
            .min(in_use)
            .div_ceil(2)
            .max(1);
        adaptive.trouble_at = if accepted > 0.0 { accepted } else { achieved }.max(rate);
        adaptive.rate = Some(rate);
        adaptive.concurrency = Some(concurrency);
        adaptive.last_decrease = Some(now);
        adaptive.last_raise = now;
        drop(adaptive);
        tracing::info!(
            rate_per_sec = rate,
            concurrency,
            "provider answered 429: lowering this worker's limits"
        );
        replace(&self.adaptive_pace, request_limiter(rate));
        self.resize_slots();
    }

    /// After quiet time, raises the adaptive limits a step (called before each call): quickly
    /// (x1.25 a second) while far below the rate where 429s began, gently (+5 %) near it, and
    /// not at all once well past it or past the configured share.
    fn maybe_raise(&self) {
        let mut adaptive = self.lock_adaptive();
        if adaptive.rate.is_none() && adaptive.concurrency.is_none() {
            return;
        }
        let now = Instant::now();
        let quiet = adaptive
            .last_decrease
            .is_none_or(|t| now.duration_since(t) >= RECOVER_AFTER);
        if !quiet || now.duration_since(adaptive.last_raise) < RAISE_EVERY {
            return;
        }
        adaptive.last_raise = now;
        let ceiling = self.rate_ceiling().min(adaptive.trouble_at * 2.0);
        let trouble_at = adaptive.trouble_at;
        adaptive.rate = adaptive
            .rate
            .map(|rate| {
                if rate < trouble_at / 2.0 {
                    rate * 1.25
                } else {
                    rate + (rate * 0.05).max(0.5)
                }
            })
            .filter(|rate| *rate < ceiling);
        adaptive.concurrency = adaptive
            .concurrency
            .map(|c| c + c.div_ceil(4))
            .filter(|c| *c < self.worker_concurrency);
        let rate = adaptive.rate;
        drop(adaptive);
        replace(&self.adaptive_pace, rate.and_then(request_limiter));
        self.resize_slots();
    }

    /// The configured share of the request rate, or "none" as a very large number.
    fn rate_ceiling(&self) -> f64 {
        let membership = self
            .membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.rpm
            .map_or(f64::MAX, |rpm| membership.share(f64::from(rpm)) / 60.0)
    }

    /// The adaptive limits now, for heartbeats and logs: (requests per second, concurrency).
    pub fn adaptive(&self) -> (Option<f64>, Option<usize>) {
        let adaptive = self.lock_adaptive();
        (adaptive.rate, adaptive.concurrency)
    }
}

/// A provider behind this worker's share of the limits.
pub struct LimitedProvider {
    inner: Arc<dyn Provider>,
    limits: Arc<ProviderLimits>,
}

impl LimitedProvider {
    pub fn new(inner: Arc<dyn Provider>, limits: Arc<ProviderLimits>) -> Self {
        Self { inner, limits }
    }

    fn estimate(request: &ProviderRequest) -> u32 {
        let prompt: usize = request
            .messages
            .iter()
            .map(|m| estimate_tokens(&m.content) + 4)
            .sum();
        let prompt = u32::try_from(prompt).unwrap_or(u32::MAX);
        prompt.saturating_add(
            request
                .params
                .max_tokens
                .unwrap_or(DEFAULT_COMPLETION_ESTIMATE),
        )
    }

    fn observe<T>(&self, result: &Result<T, ProviderError>) {
        match result {
            Err(ProviderError::RateLimited { .. }) => self.limits.rate_limited(),
            _ => self.limits.accepted(),
        }
    }
}

#[async_trait]
impl Provider for LimitedProvider {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn complete(&self, request: &ProviderRequest) -> Result<ProviderReply, ProviderError> {
        let estimate = Self::estimate(request);
        self.limits.admit(estimate).await;
        let result = self.inner.complete(request).await;
        self.observe(&result);
        if let Ok(reply) = &result
            && let Some(usage) = reply.usage
        {
            self.limits.settle_tokens(estimate, usage.total_tokens);
        }
        result
    }

    async fn complete_stream(
        &self,
        request: &ProviderRequest,
    ) -> Result<ReplyStream, ProviderError> {
        let estimate = Self::estimate(request);
        self.limits.admit(estimate).await;
        let result = self.inner.complete_stream(request).await;
        self.observe(&result);
        let stream = result?;
        let limits = self.limits.clone();
        Ok(stream
            .inspect(move |item| match item {
                Ok(StreamItem::Done {
                    usage: Some(usage), ..
                }) => limits.settle_tokens(estimate, usage.total_tokens),
                Err(ProviderError::RateLimited { .. }) => limits.rate_limited(),
                _ => {}
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
