//! Capacity leases: the provider's fleet-wide limits are divided into units, and a worker uses a
//! unit only while it holds the unit's lease.
//!
//! Dividing a limit by a momentary count of live peers is unsafe: a peer that is slow, paused or
//! cut off keeps sending at its old share while the others, no longer counting it, take the whole
//! limit. So capacity is *held* before it is used:
//!
//! - The limits are cut into units: [`RATE_UNITS`] of the request and token rates (each worth
//!   `1/RATE_UNITS` of `provider_rpm` and `provider_tpm`), and up to [`MAX_CONCURRENCY_UNITS`] of
//!   `provider_max_concurrency` (whole requests in flight, shared out so they add up to it).
//! - Each unit is a key of the KV bucket `<ns>_leases` (`rate.<i>`, `conc.<i>`), whose value
//!   names the holder. It is taken with a create (which fails if the key exists), renewed with an
//!   update that names the revision the holder last wrote (which fails if anyone else wrote since),
//!   and given back with a delete fenced the same way.
//! - The bucket forgets a key `ttl` after its last write (the stream's `max_age`, by the server's
//!   clock). A holder counts a unit as its own until `ttl - margin` after it *sent* the write that
//!   created or renewed it: the server wrote it later than that, so the key outlives the holder's
//!   own deadline, and no other worker can create it before the holder has stopped using it.
//! - A worker renews what it holds every heartbeat; aims at its share of each pool from the
//!   fleet's membership (the shares of a consistent view add up to the pool), gives back units
//!   beyond it and takes free ones up to it. A momentary wrong view only leaves units unused for a
//!   round, never used twice. A concurrency unit beyond the share is used no more at once (the
//!   worker's slots shrink to its share), but given back only once the jobs it holds fit in what
//!   the worker keeps: requests still in flight on it must end before another worker may start
//!   new ones.
//!
//! The bound: at any instant each unit is used by at most one worker, so the fleet's rates never
//! exceed the configured ones and its requests in flight never exceed `provider_max_concurrency`.
//! A worker paused for longer than its leases stops sending when it wakes (its deadline has
//! passed) and sends again only once it holds units anew; one paused for less carries on with the
//! units nobody could take meanwhile. Assumed: the NATS server's clock does not run faster than
//! the workers' by more than `margin` over a `ttl` (and, on a cluster, the servers' clocks agree
//! within it). A NATS store wiped while leases are held frees them early; the fleet may then run
//! over its limits for at most one `ttl`.
//!
//! A worker's round with the bucket, and its release of everything when it stops, are in
//! [`round`].

mod round;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;

/// Units the request and token rates are cut into.
pub const RATE_UNITS: u32 = 64;
/// Most units `provider_max_concurrency` is cut into (one per request in flight, up to this).
pub const MAX_CONCURRENCY_UNITS: u32 = 256;

/// The units of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Rate,
    Concurrency,
}

impl Pool {
    fn prefix(self) -> &'static str {
        match self {
            Pool::Rate => "rate",
            Pool::Concurrency => "conc",
        }
    }
}

/// What this worker may use, from the units it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Units of the request and token rates held (out of [`RATE_UNITS`]).
    pub rate_units: u32,
    /// Requests in flight allowed (none when `provider_max_concurrency` is not set).
    pub concurrency: Option<u32>,
    /// Until when the grant holds unless renewed; `None`: nothing is leased (no fleet-wide
    /// limit is set), so nothing expires.
    pub valid_until: Option<Instant>,
}

impl Grant {
    /// No fleet-wide limit: nothing to hold.
    pub fn unlimited() -> Self {
        Self {
            rate_units: RATE_UNITS,
            concurrency: None,
            valid_until: None,
        }
    }

    /// Nothing held yet (or any more): a worker with limits sends nothing on this grant.
    pub fn nothing(concurrency_limited: bool) -> Self {
        Self {
            rate_units: 0,
            concurrency: concurrency_limited.then_some(0),
            valid_until: Some(Instant::now()),
        }
    }

    /// Whether the grant may still be used at `now`.
    pub fn is_valid(&self, now: Instant) -> bool {
        self.valid_until.is_none_or(|until| now < until)
    }
}

/// Requests in flight concurrency unit `unit` of `units` is worth: `total` shared out over the
/// units, the first ones one more, so that the units add up to it.
fn unit_worth(total: u32, units: u32, unit: u32) -> u32 {
    let units = units.max(1);
    total / units + u32::from(unit < total % units)
}

/// A unit this worker holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    valid_until: Instant,
}

/// This worker's leases.
pub struct Leases {
    store: kv::Store,
    worker_id: String,
    ttl: Duration,
    margin: Duration,
    /// Whether the rates are limited (`provider_rpm` or `provider_tpm`).
    rate_limited: bool,
    /// `provider_max_concurrency`, when set.
    concurrency: Option<u32>,
    /// Concurrency units this worker aims at (its share): what it holds beyond them it does not
    /// use, and gives back as its jobs end.
    concurrency_target: usize,
    held: HashMap<String, Held>,
}

impl Leases {
    /// Leases in `store` (the `<ns>_leases` bucket, whose keys expire `ttl` after their last
    /// write), for the limits that are set.
    pub fn new(
        store: kv::Store,
        worker_id: &str,
        ttl: Duration,
        rate_limited: bool,
        concurrency: Option<u32>,
    ) -> Self {
        Self {
            store,
            worker_id: worker_id.to_owned(),
            ttl,
            // A third of the time between renewals, at most a second.
            margin: (ttl / 9).min(Duration::from_secs(1)),
            rate_limited,
            concurrency,
            concurrency_target: usize::MAX,
            held: HashMap::new(),
        }
    }

    /// Whether any limit needs leases at all.
    pub fn needed(&self) -> bool {
        self.rate_limited || self.concurrency.is_some()
    }

    /// Units in a pool (0 for a limit that is not set).
    fn units(&self, pool: Pool) -> u32 {
        match pool {
            Pool::Rate if self.rate_limited => RATE_UNITS,
            Pool::Rate => 0,
            Pool::Concurrency => self
                .concurrency
                .map_or(0, |total| total.clamp(1, MAX_CONCURRENCY_UNITS)),
        }
    }

    fn concurrency_worth(&self, unit: u32) -> u32 {
        self.concurrency.map_or(0, |total| {
            unit_worth(total, self.units(Pool::Concurrency), unit)
        })
    }

    fn key(pool: Pool, unit: u32) -> String {
        format!("{}.{unit}", pool.prefix())
    }

    fn parse(key: &str) -> Option<(Pool, u32)> {
        let (prefix, unit) = key.split_once('.')?;
        let pool = match prefix {
            "rate" => Pool::Rate,
            "conc" => Pool::Concurrency,
            _ => return None,
        };
        Some((pool, unit.parse().ok()?))
    }

    /// What the units still valid at `now` allow.
    pub fn grant(&self, now: Instant) -> Grant {
        if !self.needed() {
            return Grant::unlimited();
        }
        let valid: Vec<(&String, &Held)> = self
            .held
            .iter()
            .filter(|(_, held)| now < held.valid_until)
            .collect();
        let mut rate_units = 0;
        let mut concurrency_units = Vec::new();
        for (key, _) in &valid {
            match Self::parse(key) {
                Some((Pool::Rate, _)) => rate_units += 1,
                Some((Pool::Concurrency, unit)) => concurrency_units.push(unit),
                None => {}
            }
        }
        // Only the share is used; units held beyond it wait for the running jobs to end.
        concurrency_units.sort_unstable();
        let concurrency: u32 = concurrency_units
            .iter()
            .take(self.concurrency_target)
            .map(|unit| self.concurrency_worth(*unit))
            .sum();
        Grant {
            rate_units: if self.rate_limited {
                rate_units
            } else {
                RATE_UNITS
            },
            concurrency: self.concurrency.map(|_| concurrency),
            valid_until: Some(
                valid
                    .iter()
                    .map(|(_, held)| held.valid_until)
                    .min()
                    .unwrap_or(now),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_pool_and_unit() {
        assert_eq!(Leases::key(Pool::Rate, 7), "rate.7");
        assert_eq!(Leases::parse("conc.12"), Some((Pool::Concurrency, 12)));
        assert_eq!(Leases::parse("rate.x"), None);
        assert_eq!(Leases::parse("worker-1"), None);
    }

    #[test]
    fn concurrency_units_add_up_to_the_limit() {
        for total in [1, 2, 7, 255, 256, 257, 1000] {
            let units = total.clamp(1, MAX_CONCURRENCY_UNITS);
            let sum: u32 = (0..units).map(|unit| unit_worth(total, units, unit)).sum();
            assert_eq!(sum, total);
        }
    }

    #[test]
    fn an_expired_grant_is_not_valid() {
        let now = Instant::now();
        assert!(Grant::unlimited().is_valid(now));
        assert!(!Grant::nothing(true).is_valid(now + Duration::from_millis(1)));
    }
}
