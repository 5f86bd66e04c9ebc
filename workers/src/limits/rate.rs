//! Request and token rates: GCRA limiters (`governor`) that can be replaced while calls wait.

use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A rate limiter that can be replaced while calls wait on the old one.
pub(super) type SharedLimiter = RwLock<Option<Arc<DefaultDirectRateLimiter>>>;

/// A request-rate limiter counts in cells, this many per request, so that its tolerance can be a
/// fraction of a request's interval.
const CELLS_PER_REQUEST: u32 = 16;
/// How late, in cells, a request may start without losing its turn: half an interval.
const LATE_CELLS: u32 = CELLS_PER_REQUEST / 2;
/// How far ahead of its rate a worker may start requests: one request, plus the half interval a
/// late turn keeps. A fleet of `n` workers may start `n` times this many requests beyond its
/// fleet-wide rate in any window.
pub const REQUESTS_AHEAD: f64 = (CELLS_PER_REQUEST + LATE_CELLS) as f64 / CELLS_PER_REQUEST as f64;
const REQUEST_CELLS: NonZeroU32 = match NonZeroU32::new(CELLS_PER_REQUEST) {
    Some(cells) => cells,
    None => NonZeroU32::MIN,
};

/// A limiter of `per_second` requests.
pub(super) fn request_limiter(per_second: f64) -> Option<Arc<DefaultDirectRateLimiter>> {
    limiter(
        per_second * f64::from(CELLS_PER_REQUEST),
        CELLS_PER_REQUEST + LATE_CELLS,
    )
}

pub(super) fn limiter(per_second: f64, burst: u32) -> Option<Arc<DefaultDirectRateLimiter>> {
    if !per_second.is_finite() || per_second <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
    Some(Arc::new(RateLimiter::direct(quota)))
}

pub(super) fn current(limiter: &SharedLimiter) -> Option<Arc<DefaultDirectRateLimiter>> {
    limiter
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Waits for a turn under the limiter in place. If it is replaced meanwhile (a rebalance, an
/// adaptive step), waits again under the new one: calls still waiting on an old limiter must not
/// run beside the new one's, or the two rates would add up.
pub(super) async fn wait_turn(limiter: &SharedLimiter) {
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

/// Puts `next` in place of the limiter in use. A limiter that replaces another starts with its
/// burst spent, so the first request under the new rate waits one interval of it: a fresh burst
/// on top of what the old limiter has just let through would let the fleet's shares add up to
/// more than the limit for a moment every time leases move between workers (or a 429 backs off).
pub(super) fn replace(limiter: &SharedLimiter, next: Option<Arc<DefaultDirectRateLimiter>>) {
    let mut in_place = limiter.write().unwrap_or_else(PoisonError::into_inner);
    if in_place.is_some()
        && let Some(next) = &next
        && let Some(burst) = NonZeroU32::new(CELLS_PER_REQUEST + LATE_CELLS)
    {
        // The whole burst fits a new limiter, so this spends it; refused, it would spend nothing.
        let _spent = next.check_n(burst);
    }
    *in_place = next;
}
