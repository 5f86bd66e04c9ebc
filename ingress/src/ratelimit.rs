//! Per-key request rate limits: `key_rate_limit_per_sec` with a burst of `key_rate_limit_burst`,
//! per API key, per ingress process (GCRA, `governor`). Over the limit a request gets 429
//! `rate_limit_error` with `Retry-After`, before its body is read or any work is done for it.
//!
//! The limit is checked once the key is authenticated, on the key's id: every spelling of the
//! `Authorization` header that authenticates as one key (`Bearer K`, `bearer K`, `Bearer  K`)
//! draws on the one budget. A lookup of a known key is a cache hit, so a key over its rate costs
//! the database nothing; requests that do not authenticate are limited per peer instead
//! (`auth_failures`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chatq_common::ids::ApiKeyId;
use chatq_common::settings::LimitSettings;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// The limiter, shared by every request of this process.
#[derive(Clone)]
pub struct KeyRateLimits {
    limiter: Option<Arc<DefaultKeyedRateLimiter<ApiKeyId>>>,
}

impl KeyRateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        let limiter = settings.key_rate_limit_per_sec.and_then(|rate| {
            let quota = Quota::per_second(NonZeroU32::new(rate)?)
                .allow_burst(NonZeroU32::new(settings.key_rate_limit_burst.max(1))?);
            Some(Arc::new(RateLimiter::keyed(quota)))
        });
        Self { limiter }
    }

    /// Takes one request from the key's budget.
    ///
    /// # Errors
    /// 429 with the wait in `Retry-After` when the key is over its rate.
    pub fn check(&self, key: ApiKeyId) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!(chatq_common::metrics::JOBS_REJECTED, "reason" => "key_rate_limited")
                .increment(1);
            ApiError::RateLimited {
                message: "Too many requests for this API key. Slow down and retry after the time in Retry-After.".into(),
                retry_after: wait.max(Duration::from_secs(1)),
            }
        })
    }

    /// Forgets keys idle long enough to be back at full burst (bounded memory).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }
}
