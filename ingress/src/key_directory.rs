//! API keys to their owners, without letting unknown keys cost Postgres.
//!
//! A known key is reused for [`KEY_CACHE_TTL`], unless `chatq keys revoke` announces a
//! revocation, which empties the cache at once; its expiry is checked on every request.
//!
//! A well-formed random key is not in any cache, so each one would be a query. Three bounds keep
//! a flood of them from reaching the database or crowding out real clients:
//!
//! - known keys and unknown keys are cached apart ([`KEY_CACHE_TTL`] and
//!   `auth_unknown_key_cache_secs`), each with its own capacity, so a flood of unknown keys
//!   cannot evict the keys real clients use;
//! - at most `auth_max_concurrent_lookups` queries run at once; a lookup that cannot start within
//!   [`LOOKUP_WAIT`] is answered 503 rather than queued without end;
//! - each peer address may fail authentication `auth_failures_per_min` times a minute; beyond
//!   that its keys are no longer looked up (429) until its budget refills. A key already known
//!   still works from that address, so clients behind one NAT are not locked out by a neighbour.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatq_common::api_key::hash_key;
use chatq_common::db::Db;
use chatq_common::db::keys::{self, KeyOwner};
use chatq_common::settings::LimitSettings;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// How long a known key's lookup is reused.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Known keys one ingress remembers.
const KNOWN_CAPACITY: u64 = 100_000;
/// Unknown keys one ingress remembers (a flood beyond it only costs lookups, still bounded).
const UNKNOWN_CAPACITY: u64 = 100_000;
/// Longest wait for a lookup slot before the request is answered 503.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// The key caches, the lookup bound and the per-peer failure budget of one ingress.
#[derive(Clone)]
pub struct KeyDirectory {
    pool: Db,
    known: moka::future::Cache<[u8; 32], KeyOwner>,
    unknown: moka::future::Cache<[u8; 32], ()>,
    lookups: Arc<Semaphore>,
    failures: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// Peers over their failure budget, and until when.
    blocked: moka::future::Cache<IpAddr, Instant>,
}

/// Why a lookup found no owner.
#[derive(Debug, Clone)]
enum Missing {
    Unknown,
    Database(Arc<sqlx::Error>),
}

impl KeyDirectory {
    pub fn new(pool: Db, limits: &LimitSettings) -> Self {
        let failures = limits
            .auth_failures_per_min
            .and_then(NonZeroU32::new)
            .map(|per_min| Arc::new(RateLimiter::keyed(Quota::per_minute(per_min))));
        Self {
            pool,
            known: moka::future::Cache::builder()
                .max_capacity(KNOWN_CAPACITY)
                .time_to_live(KEY_CACHE_TTL)
                .build(),
            unknown: moka::future::Cache::builder()
                .max_capacity(UNKNOWN_CAPACITY)
                .time_to_live(Duration::from_secs(
                    limits.auth_unknown_key_cache_secs.max(1),
                ))
                .build(),
            lookups: Arc::new(Semaphore::new(limits.auth_max_concurrent_lookups.max(1))),
            failures,
            blocked: moka::future::Cache::builder()
                .max_capacity(UNKNOWN_CAPACITY)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// The owner of a well-formed key.
    ///
    /// # Errors
    /// 401 for a key that does not exist, 429 for a peer over its failure budget, 503 when
    /// lookups are saturated or Postgres is unreachable.
    pub async fn owner(&self, key: &str, peer: Option<IpAddr>) -> Result<KeyOwner, ApiError> {
        let hash = hash_key(key);
        let owner = self.find(&hash, peer).await?;
        // Checked on every request: a cached key stops working the moment it expires.
        if owner.expired(time::OffsetDateTime::now_utc()) {
            self.known.invalidate(&hash).await;
            return Err(ApiError::Unauthenticated(
                "This API key has expired. Ask for a new one.".into(),
            ));
        }
        Ok(owner)
    }

    async fn find(&self, hash: &[u8; 32], peer: Option<IpAddr>) -> Result<KeyOwner, ApiError> {
        let hash = *hash;
        if let Some(owner) = self.known.get(&hash).await {
            return Ok(owner);
        }
        if self.unknown.contains_key(&hash) {
            return Err(self.failed(peer).await);
        }
        if let Some(wait) = self.blocked(peer).await {
            return Err(too_many_failures(wait));
        }
        // Concurrent lookups of one key make one query.
        let lookup = self.known.try_get_with(hash, async {
            let _slot = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(Missing::Database(Arc::new(sqlx::Error::PoolTimedOut)))?;
            match keys::find_key_owner(&self.pool, &hash).await {
                Ok(Some(owner)) => Ok(owner),
                Ok(None) => Err(Missing::Unknown),
                Err(err) => Err(Missing::Database(Arc::new(err))),
            }
        });
        match lookup.await {
            Ok(owner) => Ok(owner),
            Err(missing) => match Arc::unwrap_or_clone(missing) {
                Missing::Unknown => {
                    self.unknown.insert(hash, ()).await;
                    Err(self.failed(peer).await)
                }
                Missing::Database(err) => Err(match Arc::try_unwrap(err) {
                    Ok(err) => ApiError::from(err),
                    Err(_) => ApiError::Overloaded {
                        message: "Too many API keys are being checked at once. Try again shortly."
                            .into(),
                        retry_after: Duration::from_secs(1),
                    },
                }),
            },
        }
    }

    /// Counts a failed authentication against the peer; returns the 401 it gets.
    pub async fn failed(&self, peer: Option<IpAddr>) -> ApiError {
        if let (Some(failures), Some(peer)) = (&self.failures, peer)
            && let Err(not_until) = failures.check_key(&peer)
        {
            // Over budget: the peer's next keys are refused without a lookup until it refills.
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.blocked.insert(peer, Instant::now() + wait).await;
        }
        ApiError::Unauthenticated("Incorrect API key provided.".into())
    }

    /// How long a peer over its failure budget must wait, if it is.
    async fn blocked(&self, peer: Option<IpAddr>) -> Option<Duration> {
        let until = self.blocked.get(&peer?).await?;
        until.checked_duration_since(Instant::now())
    }

    /// Forgets every known key, so the next request of each is looked up again: a key was
    /// revoked (`chatq keys revoke` says so over NATS; revocations are rare, and the lookups
    /// this costs are bounded like any others).
    pub fn forget_known_keys(&self) {
        self.known.invalidate_all();
    }

    /// Forgets peers idle long enough to be back at their full failure budget.
    pub fn forget_idle(&self) {
        if let Some(failures) = &self.failures {
            failures.retain_recent();
        }
    }
}

fn too_many_failures(wait: Duration) -> ApiError {
    ApiError::RateLimited {
        message: "Too many failed authentications from this address. Retry after the time in Retry-After with a valid API key.".into(),
        retry_after: wait.max(Duration::from_secs(1)),
    }
}
