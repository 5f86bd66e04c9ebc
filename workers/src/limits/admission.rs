//! A call's admission: it waits for a valid grant, its turn of the request rate (and of the
//! adaptive pace), and its estimated tokens, behind interactive calls when it is a batch line;
//! and what it used beyond its estimate is settled afterwards.

use std::time::{Duration, Instant};

use chatq_common::job::Lane;

use super::ProviderLimits;
use super::rate::wait_turn;

impl ProviderLimits {
    /// Waits until a call estimated at `tokens` may start: under a valid grant, at its turn of
    /// the request rate, once its tokens (and the debt of earlier calls) are taken, and for a
    /// batch line, once no interactive call is waiting ([`priority`]). Returns how long it waited.
    ///
    /// [`priority`]: super::priority
    pub async fn admit(&self, tokens: u32, lane: Lane) -> Duration {
        let started = Instant::now();
        self.maybe_raise();
        let _in_line = self.priority.wait_in_line(lane).await;
        loop {
            self.until_granted().await;
            wait_turn(&self.requests).await;
            wait_turn(&self.adaptive_pace).await;
            self.take_tokens(tokens).await;
            // A grant that lapsed while this call waited (the worker was paused, or could not
            // renew its leases) does not cover it: wait for the next one, and take a turn there.
            if self.grant().is_valid(Instant::now()) {
                break;
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

    /// Waits for a grant that is valid and allows requests.
    async fn until_granted(&self) {
        let mut grants = self.grant.subscribe();
        loop {
            let grant = *grants.borrow_and_update();
            if grant.is_valid(Instant::now()) && grant.rate_units > 0 {
                return;
            }
            // Nothing held, or a lapsed grant: wait for the next lease round's.
            if grants.changed().await.is_err() {
                return;
            }
        }
    }

    /// Pays `tokens` from the token budget, if tokens are limited.
    async fn take_tokens(&self, tokens: u32) {
        if let Some(budget) = &self.tokens {
            budget.pay(tokens.max(1)).await;
        }
    }

    /// Takes tokens the provider reported beyond the estimate from later calls.
    pub fn settle_tokens(&self, estimated: u32, used: u32) {
        if let Some(budget) = &self.tokens
            && used > estimated
        {
            budget.owe(used - estimated);
        }
    }
}
