//! An attempt's call through the reply cache: a hit is played back, a miss calls the provider
//! (once for all identical requests under way) and fills the cache.

use std::sync::Arc;

use chatq_common::ids::TenantId;
use chatq_common::reply_cache::CacheTier;

use super::semantic::Probe;
use super::{Begin, CacheKey, CachedReply, ReplyCache};
use crate::call::{CallFailed, Reply, replay_reply, stream_reply};
use crate::events::AttemptEvents;
use crate::provider::{Provider, ProviderRequest};

/// What the cache said before the attempt started: whether the request is cacheable, and the
/// reply if one is already stored (so `job.started` can say the reply is cached, and by which
/// tier).
pub struct Prepared<'c> {
    cached: Option<(&'c ReplyCache, CacheKey)>,
    hit: Option<Hit>,
    /// The semantic lookup that missed, to store the reply with.
    probe: Option<Probe>,
}

/// A stored reply found before the attempt started.
struct Hit {
    reply: Arc<CachedReply>,
    tier: CacheTier,
    /// The key the reply is cached under: the request's own for an exact hit, the earlier
    /// request's for a semantic one.
    key: CacheKey,
}

impl Prepared<'_> {
    /// The tier that holds the reply, if one does.
    pub fn hit_tier(&self) -> Option<CacheTier> {
        self.hit.as_ref().map(|hit| hit.tier)
    }
}

/// A reply, and how the cache was involved.
#[derive(Debug)]
pub struct Answered {
    pub reply: Reply,
    /// The tier the reply was served from (the exact tier for an identical request's call), or
    /// `None` when this request's own call answered it.
    pub cache: Option<CacheTier>,
    /// The key the reply is cached under, when the request was cacheable: what negative feedback
    /// on it evicts.
    pub key: Option<CacheKey>,
}

/// Looks `request` of `tenant` up in the tiers of `cache`: both exact tiers, then the semantic
/// tier when it is on.
pub async fn prepare<'c>(
    cache: Option<&'c ReplyCache>,
    tenant: TenantId,
    request: &ProviderRequest,
) -> Prepared<'c> {
    let Some((cache, key)) = cache.and_then(|c| c.key_for(tenant, request).map(|key| (c, key)))
    else {
        return Prepared {
            cached: None,
            hit: None,
            probe: None,
        };
    };
    if let Some(reply) = cache.lookup(key).await {
        return Prepared {
            cached: Some((cache, key)),
            hit: Some(Hit {
                reply,
                tier: CacheTier::Exact,
                key,
            }),
            probe: None,
        };
    }
    let Some((semantic, neighbourhood)) = cache.neighbourhood_for(tenant, request) else {
        return Prepared {
            cached: Some((cache, key)),
            hit: None,
            probe: None,
        };
    };
    let looked = semantic.lookup(neighbourhood, request.lane).await;
    Prepared {
        cached: Some((cache, key)),
        hit: looked.hit.map(|(key, reply)| Hit {
            reply: Arc::new(reply),
            tier: CacheTier::Semantic,
            key,
        }),
        probe: looked.probe,
    }
}

/// Answers `request`: from the cache when it holds the reply (or an identical request's call
/// brings it), otherwise from `provider`, publishing deltas either way.
///
/// # Errors
/// The provider failed (a reply from the cache cannot).
pub async fn answer(
    prepared: Prepared<'_>,
    provider: &dyn Provider,
    request: &ProviderRequest,
    events: &mut AttemptEvents,
) -> Result<Answered, CallFailed> {
    let Prepared { cached, hit, probe } = prepared;
    let Some((cache, key)) = cached else {
        let reply = stream_reply(provider, request, events).await?;
        return Ok(Answered {
            reply,
            cache: None,
            key: None,
        });
    };
    let hit = match hit {
        Some(hit) => hit,
        None => match cache.begin(key, probe).await {
            Begin::Hit(reply) => Hit {
                reply,
                tier: CacheTier::Exact,
                key,
            },
            Begin::Lead(leader) => {
                let called = tokio::select! {
                    called = stream_reply(provider, request, events) => called,
                    never = cache.keep_alive(&leader) => match never {},
                };
                return match called {
                    Ok(reply) => {
                        cache.fill(leader, &reply).await;
                        Ok(Answered {
                            reply,
                            cache: None,
                            key: Some(key),
                        })
                    }
                    Err(failed) => {
                        cache.abandon(leader).await;
                        Err(failed)
                    }
                };
            }
        },
    };
    tracing::debug!(key = ?hit.key, tier = hit.tier.as_str(), "reply served from the cache");
    let reply = replay_reply(hit.reply.replay(), request, events).await?;
    Ok(Answered {
        reply,
        cache: Some(hit.tier),
        key: Some(hit.key),
    })
}
