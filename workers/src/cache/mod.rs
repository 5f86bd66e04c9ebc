//! The reply cache: a repeated deterministic request (temperature 0, or a fixed seed) is answered
//! with the reply an identical request got, and identical requests under way at once share one
//! provider call. Optionally ([`semantic`], off by default), a near-duplicate is answered with the
//! reply of a request that differs only in the wording of its last user message. It sits in the
//! processing step ([`answer`]), so conversation turns, chat completions and batch lines all use
//! it, and a hit is committed and streamed like any reply: the same deltas, the same terminal
//! event, with `cached: true` (and the tier, `cache`) on the job.
//!
//! Safety first: the key ([`key`]) includes the tenant unless the operator widened the scope
//! (`cache_scope = global`), so one tenant never receives another's reply; a client can opt out
//! (`Cache-Control: no-cache`, `"cache": false`); negative feedback on a cached reply evicts it
//! ([`chatq_common::reply_cache::evict_message`], and [`listen_evictions`] here).
//!
//! # Layout
//!
//! - [`key`]: which requests are cacheable, and the key they are cached under.
//! - [`entry`]: what is kept of a reply, and playing it back as a stream.
//! - this file: the tiers together: memory (`moka`, bounded in bytes, with the TTL) in front
//!   of [`shared`] (the NATS KV bucket `<ns>_cache`, with the same TTL), then, when it is on,
//!   [`semantic`] (embeddings, nearest neighbour in Postgres with pgvector).
//! - [`flight`]: coalescing, in this process and across the fleet.
//! - [`answer`]: the attempt's call, through the cache.

pub mod answer;
pub mod entry;
pub mod flight;
pub mod key;
pub mod semantic;
pub mod shared;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chatq_common::db::Db;
use chatq_common::ids::{MessageId, TenantId};
use chatq_common::metrics as names;
use chatq_common::settings::{CacheScope, CacheSettings};
use chatq_common::topology::Topology;
use futures::StreamExt as _;
use moka::notification::RemovalCause;
use tokio_util::sync::CancellationToken;

pub use self::entry::CachedReply;
use self::flight::{Flights, LocalJoin, Marker};
pub use self::key::CacheKey;
use self::key::Neighbourhood;
use self::semantic::{Probe, SemanticTier};
use self::shared::SharedTier;
use crate::call::Reply;
use crate::provider::{Provider, ProviderRequest};

/// The tiers and the flights of one worker process.
pub struct ReplyCache {
    scope: CacheScope,
    /// The provider's description: replies of another provider are another provider's.
    provider: String,
    memory: moka::future::Cache<CacheKey, Arc<CachedReply>>,
    shared: SharedTier,
    flights: Flights,
    /// The semantic tier, when `cache_semantic` is on.
    semantic: Option<SemanticTier>,
}

/// What [`ReplyCache::begin`] found.
pub enum Begin {
    /// A reply to serve: cached, or the reply of an identical request's call.
    Hit(Arc<CachedReply>),
    /// No reply yet: this request calls the provider, then [`ReplyCache::fill`]s the cache.
    Lead(Leader),
}

/// The right, and the duty, to call the provider for a key.
pub struct Leader {
    key: CacheKey,
    local: flight::LocalFlight,
    marker: Option<String>,
    /// The request's semantic lookup, to store the reply with.
    probe: Option<Probe>,
}

fn count_lookup(tier: &'static str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!(names::CACHE_LOOKUPS, "tier" => tier, "result" => result).increment(1);
}

impl ReplyCache {
    /// The cache of a worker, with its buckets (and the semantic tier's table) created, or `None`
    /// when the settings turn it off. `provider` is the provider behind the limits, which the
    /// semantic tier asks for embeddings.
    ///
    /// # Errors
    /// The buckets cannot be created or opened; the semantic tier is on but cannot start.
    pub async fn open(
        settings: &CacheSettings,
        jetstream: &async_nats::jetstream::Context,
        topology: &Topology,
        provider: Arc<dyn Provider>,
        pool: Db,
        holder: &str,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        if !settings.enabled {
            return Ok(None);
        }
        let ttl = Duration::from_secs(settings.ttl_secs.max(1));
        topology
            .ensure_cache_buckets(jetstream, ttl, flight::MARKER_TTL)
            .await
            .context("cannot create the reply cache's buckets")?;
        let replies = jetstream
            .get_key_value(topology.cache_bucket())
            .await
            .context("cannot open the reply cache bucket")?;
        let markers = jetstream
            .get_key_value(topology.cache_flights_bucket())
            .await
            .context("cannot open the reply cache's flights bucket")?;
        let memory = memory_tier(settings.memory_bytes, ttl);
        for reason in ["feedback", "size", "expired"] {
            metrics::counter!(names::CACHE_EVICTIONS, "reason" => reason).absolute(0);
        }
        let semantic = SemanticTier::open(settings, pool, provider.clone(), ttl).await?;
        Ok(Some(Arc::new(Self {
            scope: settings.scope,
            provider: provider.describe(),
            memory,
            shared: SharedTier::new(replies),
            flights: Flights::new(markers, holder.to_owned()),
            semantic,
        })))
    }

    /// The key of `request` from `tenant`, or `None` when it may not be cached.
    pub fn key_for(&self, tenant: TenantId, request: &ProviderRequest) -> Option<CacheKey> {
        key::key_for(self.scope, tenant, &self.provider, request)
    }

    /// The semantic tier and the neighbourhood of `request` from `tenant` in it, when the tier is
    /// on and the request a candidate.
    pub fn neighbourhood_for(
        &self,
        tenant: TenantId,
        request: &ProviderRequest,
    ) -> Option<(&SemanticTier, Neighbourhood)> {
        let semantic = self.semantic.as_ref()?;
        let neighbourhood = key::neighbourhood_for(
            self.scope,
            tenant,
            &self.provider,
            semantic.model(),
            request,
        )?;
        Some((semantic, neighbourhood))
    }

    async fn remember(&self, key: CacheKey, reply: Arc<CachedReply>) {
        self.memory.insert(key, reply).await;
        metrics::gauge!(names::CACHE_MEMORY_BYTES).set(self.memory.weighted_size() as f64);
    }

    /// Looks `key` up in memory, then in the shared tier (keeping a shared hit in memory).
    pub async fn lookup(&self, key: CacheKey) -> Option<Arc<CachedReply>> {
        if let Some(reply) = self.memory.get(&key).await {
            count_lookup("memory", true);
            metrics::counter!(names::CACHE_CALLS_SAVED).increment(1);
            return Some(reply);
        }
        count_lookup("memory", false);
        let reply = self.shared.get(key).await;
        count_lookup("shared", reply.is_some());
        let reply = Arc::new(reply?);
        self.remember(key, reply.clone()).await;
        metrics::counter!(names::CACHE_CALLS_SAVED).increment(1);
        Some(reply)
    }

    /// After a [`ReplyCache::lookup`] that missed: joins a call under way here, or else one
    /// under way on another worker; failing both, this request leads: it calls the provider and
    /// fills the cache (the semantic tier too, with `probe`).
    pub async fn begin(&self, key: CacheKey, probe: Option<Probe>) -> Begin {
        let local = match self.flights.join_local(key).await {
            LocalJoin::Answered(reply) => {
                metrics::counter!(names::CACHE_COALESCED, "scope" => "process").increment(1);
                return self.saved(reply);
            }
            LocalJoin::Lead(local) => local,
        };
        loop {
            match self.flights.claim(key).await {
                Marker::Held(marker) => {
                    // A holder elsewhere may have stored the reply and let go just before.
                    if let Some(reply) = self.shared.get(key).await {
                        count_lookup("shared", true);
                        self.flights.release(marker).await;
                        return self.shared_hit(key, local, reply).await;
                    }
                    return Begin::Lead(Leader {
                        key,
                        local,
                        marker,
                        probe,
                    });
                }
                Marker::Elsewhere => {
                    let waited = self.shared.wait_for(key, self.flights.released(key)).await;
                    if let Some(reply) = waited {
                        metrics::counter!(names::CACHE_COALESCED, "scope" => "fleet").increment(1);
                        return self.shared_hit(key, local, reply).await;
                    }
                    // The holder let go without a reply: take over.
                }
            }
        }
    }

    async fn shared_hit(
        &self,
        key: CacheKey,
        local: flight::LocalFlight,
        reply: CachedReply,
    ) -> Begin {
        let reply = Arc::new(reply);
        self.remember(key, reply.clone()).await;
        local.finish(reply.clone());
        self.saved(reply)
    }

    fn saved(&self, reply: Arc<CachedReply>) -> Begin {
        metrics::counter!(names::CACHE_CALLS_SAVED).increment(1);
        Begin::Hit(reply)
    }

    /// Keeps the leader's fleet-wide marker alive while its call runs; never returns.
    pub async fn keep_alive(&self, leader: &Leader) -> std::convert::Infallible {
        self.flights.keep_alive(leader.marker.as_deref()).await
    }

    /// Stores the leader's reply in every tier and hands it to the requests waiting for it.
    pub async fn fill(&self, leader: Leader, reply: &Reply) {
        let Leader {
            key,
            local,
            marker,
            probe,
        } = leader;
        let entry = Arc::new(CachedReply::of(reply));
        self.remember(key, entry.clone()).await;
        self.shared.put(key, &entry).await;
        local.finish(entry.clone());
        self.flights.release(marker).await;
        if let (Some(semantic), Some(probe)) = (&self.semantic, probe) {
            semantic.store(probe, key, &entry).await;
        }
    }

    /// Ends a leader's call without a reply: waiters try again themselves.
    pub async fn abandon(&self, leader: Leader) {
        let Leader { marker, local, .. } = leader;
        drop(local);
        self.flights.release(marker).await;
    }

    /// Remembers which cached reply a conversation's reply message was served from.
    pub async fn index_message(&self, message: MessageId, key: CacheKey) {
        self.shared.index_message(message, key).await;
    }

    /// Drops `key` from this worker's memory tier, and from the semantic tier.
    pub async fn forget(&self, key: CacheKey) {
        if let Some(semantic) = &self.semantic {
            semantic.forget(key).await;
        }
        self.memory.invalidate(&key).await;
        self.memory.run_pending_tasks().await;
        metrics::gauge!(names::CACHE_MEMORY_BYTES).set(self.memory.weighted_size() as f64);
    }
}

/// The memory tier: replies kept up to `max_bytes` of memory for `ttl`, their evictions
/// counted by reason.
pub fn memory_tier(
    max_bytes: u64,
    ttl: Duration,
) -> moka::future::Cache<CacheKey, Arc<CachedReply>> {
    moka::future::Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|_key, reply: &Arc<CachedReply>| reply.weight())
        .time_to_live(ttl)
        .eviction_listener(|_key, _reply, cause| {
            let reason = match cause {
                RemovalCause::Size => "size",
                RemovalCause::Expired => "expired",
                RemovalCause::Explicit => "feedback",
                RemovalCause::Replaced => return,
            };
            metrics::counter!(names::CACHE_EVICTIONS, "reason" => reason).increment(1);
        })
        .build()
}

/// Drops replies from the memory tier as eviction notices arrive on `subscriber` (the ingress
/// sends one when a cached reply is rated down), until `stop`.
pub async fn listen_evictions(
    cache: Arc<ReplyCache>,
    mut subscriber: async_nats::Subscriber,
    stop: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            notice = subscriber.next() => notice,
            () = stop.cancelled() => break,
        };
        let Some(notice) = notice else { break };
        if let Some(key) = std::str::from_utf8(&notice.payload)
            .ok()
            .and_then(CacheKey::from_hex)
        {
            cache.forget(key).await;
        }
    }
    drop(subscriber.unsubscribe().await);
}
