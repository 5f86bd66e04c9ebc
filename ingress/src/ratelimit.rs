//! Per-key request rate limits at the door: `key_rate_limit_per_sec` with a burst of
//! `key_rate_limit_burst`, per API key, per ingress process (GCRA, `governor`). Over the limit a
//! request gets 429 `rate_limit_error` with `Retry-After`, before any work is done for it.
//!
//! Keys are told apart by the hash of the bearer token, so the limit applies before (and
//! without) the key lookup; requests without a token share one bucket.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chatq_common::settings::LimitSettings;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// The limiter, shared by every request of this process.
#[derive(Clone)]
pub struct KeyRateLimits {
    limiter: Option<Arc<DefaultKeyedRateLimiter<[u8; 32]>>>,
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

    /// Forgets keys idle long enough to be back at full burst (bounded memory).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }
}

/// Middleware: 429 for a key over its rate.
pub async fn limit_per_key(
    State(limits): State<KeyRateLimits>,
    request: Request,
    next: Next,
) -> Response {
    let Some(limiter) = &limits.limiter else {
        return next.run(request).await;
    };
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    let key = chatq_common::api_key::hash_key(&String::from_utf8_lossy(token));
    match limiter.check_key(&key) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!(chatq_common::metrics::JOBS_REJECTED, "reason" => "key_rate_limited")
                .increment(1);
            ApiError::RateLimited {
                message: "Too many requests for this API key. Slow down and retry after the time in Retry-After.".into(),
                retry_after: wait.max(Duration::from_secs(1)),
            }
            .into_response()
        }
    }
}
