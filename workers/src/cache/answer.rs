//! An attempt's call through the reply cache: a hit is played back, a miss calls the provider
//! (once for all identical requests under way) and fills the cache.

use std::sync::Arc;

use chatq_common::ids::TenantId;

use super::{Begin, CacheKey, CachedReply, ReplyCache};
use crate::call::{CallFailed, Reply, replay_reply, stream_reply};
use crate::events::AttemptEvents;
use crate::provider::{Provider, ProviderRequest};

/// What the cache said before the attempt started: whether the request is cacheable, and the
/// reply if one is already stored (so `job.started` can say the reply is cached).
pub struct Prepared<'c> {
    cached: Option<(&'c ReplyCache, CacheKey)>,
    hit: Option<Arc<CachedReply>>,
}

impl Prepared<'_> {
    pub fn is_hit(&self) -> bool {
        self.hit.is_some()
    }
}

/// A reply, and how the cache was involved.
#[derive(Debug)]
pub struct Answered {
    pub reply: Reply,
    /// Served from the cache (or from an identical request's call), not by a call of its own.
    pub cached: bool,
    /// The key the reply is cached under, when the request was cacheable.
    pub key: Option<CacheKey>,
}

/// Looks `request` of `tenant` up in both tiers of `cache`.
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
        };
    };
    Prepared {
        cached: Some((cache, key)),
        hit: cache.lookup(key).await,
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
    let Prepared { cached, hit } = prepared;
    let Some((cache, key)) = cached else {
        let reply = stream_reply(provider, request, events).await?;
        return Ok(Answered {
            reply,
            cached: false,
            key: None,
        });
    };
    let begin = match hit {
        Some(entry) => Begin::Hit(entry),
        None => cache.begin(key).await,
    };
    match begin {
        Begin::Hit(entry) => {
            tracing::debug!(?key, "reply served from the cache");
            let reply = replay_reply(entry.replay(), request, events).await?;
            Ok(Answered {
                reply,
                cached: true,
                key: Some(key),
            })
        }
        Begin::Lead(leader) => {
            let called = tokio::select! {
                called = stream_reply(provider, request, events) => called,
                never = cache.keep_alive(&leader) => match never {},
            };
            match called {
                Ok(reply) => {
                    cache.fill(leader, &reply).await;
                    Ok(Answered {
                        reply,
                        cached: false,
                        key: Some(key),
                    })
                }
                Err(failed) => {
                    cache.abandon(leader).await;
                    Err(failed)
                }
            }
        }
    }
}
