//! Coalescing: identical cacheable requests that arrive while one of them is calling the provider
//! wait for that call instead of making their own.
//!
//! - **In one process**, a map from key to a `watch` channel: the first request leads, later ones
//!   subscribe and are handed the reply when it arrives. A leader that ends without a reply (its
//!   call failed, its job was cancelled) drops its channel, and a waiter then tries again itself.
//! - **Across the fleet**, a marker in the NATS KV bucket `<ns>_cache_flights`, taken with
//!   `create` (only one worker can), refreshed while the call runs and deleted when it ends.
//!   Other workers watch the shared tier for the reply. The bucket forgets a marker
//!   [`MARKER_TTL`] after its last refresh, so a holder that died stops blocking anyone then:
//!   waiters poll the marker, and once it is gone without a reply, one of them takes it over.
//!
//! Coalescing never makes a request fail: if the markers cannot be read or written, the request
//! simply calls the provider.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store};
use tokio::sync::watch;

use super::entry::CachedReply;
use super::key::CacheKey;

/// How long a fleet-wide marker outlives its holder's last refresh.
pub const MARKER_TTL: Duration = Duration::from_secs(15);
/// How often a holder refreshes its marker.
const MARKER_REFRESH: Duration = Duration::from_secs(5);
/// How often a waiter on another worker checks that the marker is still held.
const MARKER_POLL: Duration = Duration::from_millis(250);

type Answer = Option<Arc<CachedReply>>;
/// The flights under way in this process: each key's leader id and the channel of its answer.
type LocalFlights = Arc<Mutex<HashMap<CacheKey, (u64, watch::Sender<Answer>)>>>;

/// The calls under way in this process, and the fleet's markers.
pub struct Flights {
    local: LocalFlights,
    next_id: AtomicU64,
    markers: Store,
    /// Written into markers, for whoever inspects the bucket.
    holder: String,
}

/// The outcome of joining the flights of this process.
pub enum LocalJoin {
    /// Another request here called the provider; this is its reply.
    Answered(Arc<CachedReply>),
    /// No request here is calling: this one leads.
    Lead(LocalFlight),
}

/// The outcome of asking for the fleet-wide marker.
pub enum Marker {
    /// This worker holds it (or the markers are unavailable and it calls without one).
    Held(Option<String>),
    /// Another worker holds it.
    Elsewhere,
}

impl Flights {
    pub fn new(markers: Store, holder: String) -> Self {
        Self {
            local: Arc::default(),
            next_id: AtomicU64::new(0),
            markers,
            holder,
        }
    }

    /// Leads the flight of `key` in this process, or waits for the one under way.
    pub async fn join_local(&self, key: CacheKey) -> LocalJoin {
        loop {
            let waiting = {
                let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
                match local.get(&key) {
                    Some((_, sender)) => sender.subscribe(),
                    None => {
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        let (sender, _) = watch::channel(None);
                        local.insert(key, (id, sender.clone()));
                        return LocalJoin::Lead(LocalFlight {
                            local: self.local.clone(),
                            key,
                            id,
                            sender,
                        });
                    }
                }
            };
            let mut waiting = waiting;
            if let Ok(answer) = waiting.wait_for(Option::is_some).await
                && let Some(reply) = answer.clone()
            {
                return LocalJoin::Answered(reply);
            }
            // The leader ended without a reply: try again (perhaps as the leader).
        }
    }

    fn marker_key(key: CacheKey) -> String {
        format!("f.{}", key.hex())
    }

    /// Takes the fleet-wide marker of `key`, unless another worker holds it.
    pub async fn claim(&self, key: CacheKey) -> Marker {
        let name = Self::marker_key(key);
        match self
            .markers
            .create(&name, self.holder.clone().into_bytes().into())
            .await
        {
            Ok(_) => Marker::Held(Some(name)),
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => Marker::Elsewhere,
            Err(err) => {
                tracing::warn!(?key, error = %err, "cannot take a coalescing marker; calling without one");
                Marker::Held(None)
            }
        }
    }

    /// Resolves once no worker holds the marker of `key` (it was deleted or expired).
    pub async fn released(&self, key: CacheKey) {
        let name = Self::marker_key(key);
        let mut ticks = tokio::time::interval(MARKER_POLL);
        loop {
            ticks.tick().await;
            match self.markers.entry(name.clone()).await {
                Ok(Some(entry)) if entry.operation == Operation::Put => {}
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(?key, error = %err, "cannot read a coalescing marker");
                    return;
                }
            }
        }
    }

    /// Keeps a held marker alive; never returns (the call it runs beside drops it).
    pub async fn keep_alive(&self, marker: Option<&str>) -> Infallible {
        loop {
            tokio::time::sleep(MARKER_REFRESH).await;
            if let Some(name) = marker
                && let Err(err) = self
                    .markers
                    .put(name, self.holder.clone().into_bytes().into())
                    .await
            {
                tracing::warn!(error = %err, "cannot refresh a coalescing marker");
            }
        }
    }

    /// Lets go of a held marker, so waiters elsewhere look for the reply (or take over) at once.
    pub async fn release(&self, marker: Option<String>) {
        if let Some(name) = marker
            && let Err(err) = self.markers.delete(&name).await
        {
            tracing::warn!(error = %err, "cannot release a coalescing marker; it will expire");
        }
    }
}

/// Leadership of one key's flight in this process. Dropped without [`LocalFlight::finish`], it
/// lets its waiters go to try again.
pub struct LocalFlight {
    local: LocalFlights,
    key: CacheKey,
    id: u64,
    sender: watch::Sender<Answer>,
}

impl LocalFlight {
    /// Hands `reply` to every request waiting here.
    pub fn finish(self, reply: Arc<CachedReply>) {
        self.sender.send_replace(Some(reply));
    }
}

impl Drop for LocalFlight {
    fn drop(&mut self) {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if local.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            local.remove(&self.key);
        }
    }
}
