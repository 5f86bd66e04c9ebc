//! The worker's reaction to 429s: additive increase, multiplicative decrease of its own request
//! rate and concurrency, below whatever share of the configured limits it holds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ProviderLimits;
use super::rate::{replace, request_limiter};

/// After a 429, the rate becomes this fraction of the achieved one.
pub(super) const DECREASE: f64 = 0.7;
/// The adaptive rate never goes below this (requests per second): a provider that answers 429 at
/// random, whatever the rate, must not stall the worker.
const MIN_RATE: f64 = 1.0;
/// Quiet time before a limit is raised again, and between raises.
const RECOVER_AFTER: Duration = Duration::from_secs(2);
const RAISE_EVERY: Duration = Duration::from_secs(1);

/// What the worker has learnt from 429s.
#[derive(Debug)]
pub(super) struct Adaptive {
    /// Requests per second this worker allows itself; `None` when no 429 asked for less.
    pub(super) rate: Option<f64>,
    /// Jobs this worker allows itself; `None` when no 429 asked for less.
    pub(super) concurrency: Option<usize>,
    pub(super) last_decrease: Option<Instant>,
    pub(super) last_raise: Instant,
    /// The rate achieved when the last 429 came: recovery slows down near it.
    pub(super) trouble_at: f64,
    /// When recent calls started, for the achieved rate.
    pub(super) starts: VecDeque<Instant>,
    /// When recent calls were accepted (answered with anything but 429): the rate the provider
    /// actually lets through.
    pub(super) accepted: VecDeque<Instant>,
}

impl ProviderLimits {
    /// Requests per second this worker started recently (over up to two seconds), and how many
    /// of those a second the provider accepted.
    pub(super) fn achieved_rates(adaptive: &mut Adaptive, now: Instant) -> (f64, f64) {
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
    pub(super) fn maybe_raise(&self) {
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
        self.rpm
            .map_or(f64::MAX, |rpm| self.rate_share() * f64::from(rpm) / 60.0)
    }

    /// The adaptive limits now, for heartbeats and logs: (requests per second, concurrency).
    pub fn adaptive(&self) -> (Option<f64>, Option<usize>) {
        let adaptive = self.lock_adaptive();
        (adaptive.rate, adaptive.concurrency)
    }
}
