//! The token budget: a bucket of tokens that refills at this worker's share of `provider_tpm`.
//!
//! A call pays its whole estimate before it starts, even one larger than the bucket holds: the
//! level goes below zero, and the call (and the ones queued after it) waits until it is back at
//! zero. Tokens the provider reports beyond an estimate are paid the same way, by later calls.
//! When the share changes (a lease round), the rate changes and the level is kept: a new share
//! never comes with a fresh bucket, so the budget over any minute stays the sum of the shares
//! held in it, plus at most one bucket.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest single wait before the rate is looked at again (it may have changed meanwhile).
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Level {
    per_second: f64,
    burst: f64,
    /// Tokens available; below zero, owed.
    tokens: f64,
    updated: Instant,
}

impl Level {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.updated = now;
    }
}

/// One worker's token budget.
#[derive(Debug)]
pub struct TokenBudget {
    level: Mutex<Level>,
    /// One call at a time pays: calls paying in turns would all start late together instead of
    /// one after another.
    turn: tokio::sync::Mutex<()>,
}

impl TokenBudget {
    /// An empty budget with no rate yet (a worker before its first lease round).
    pub fn new() -> Self {
        Self {
            level: Mutex::new(Level {
                per_second: 0.0,
                burst: 0.0,
                tokens: 0.0,
                updated: Instant::now(),
            }),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    fn level(&self) -> std::sync::MutexGuard<'_, Level> {
        self.level.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new share: `per_second` tokens a second, at most `burst` saved up. The level is kept.
    pub fn set_rate(&self, per_second: f64, burst: f64) {
        let mut level = self.level();
        level.refill(Instant::now());
        level.per_second = per_second.max(0.0);
        level.burst = burst.max(0.0);
        level.tokens = level.tokens.min(level.burst);
    }

    /// Pays `tokens`, waiting until the budget is no longer in debt.
    pub async fn pay(&self, tokens: u32) {
        let _turn = self.turn.lock().await;
        {
            let mut level = self.level();
            level.refill(Instant::now());
            level.tokens -= f64::from(tokens);
        }
        loop {
            let wait = {
                let mut level = self.level();
                level.refill(Instant::now());
                if level.tokens >= 0.0 {
                    return;
                }
                if level.per_second > 0.0 {
                    Duration::from_secs_f64(-level.tokens / level.per_second).min(RECHECK)
                } else {
                    RECHECK
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Owes `tokens` more (used beyond an estimate): later calls pay for them.
    pub fn owe(&self, tokens: u32) {
        let mut level = self.level();
        level.refill(Instant::now());
        level.tokens -= f64::from(tokens);
    }
}
