//! The semantic tier, off unless `cache_semantic` is on: a cacheable request that neither exact
//! tier holds may be served the reply of an earlier request that differs from it only in the
//! wording of its last user message, when the embeddings of the two wordings are at least
//! `cache_semantic_threshold` alike (cosine similarity).
//!
//! - Which requests are candidates, and what must match exactly, is the exact tier's rule and a
//!   [`Neighbourhood`] ([`super::key`]): the same scope (the tenant, unless widened), provider,
//!   model, embedding model, and every other part of the request.
//! - The embedding is the provider's (`/embeddings`, model `cache_semantic_model`), asked through
//!   the provider limits and counted in `chatq_provider_calls_total` (`call="embedding"`) like any
//!   call; the nearest neighbour is found in Postgres with pgvector ([`store`]).
//! - After a miss, when the provider has answered, the reply is stored with the embedding (the
//!   exact tiers store it too, as ever).
//!
//! Like the shared tier, it is an optimisation: an embedding that fails or takes longer than
//! [`LOOKUP_TIMEOUT`], or a database error, is logged and counted as a miss, and the request goes
//! on to the provider.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chatq_common::db::Db;
use chatq_common::job::Lane;
use chatq_common::metrics as names;
use chatq_common::settings::CacheSettings;

use self::store::SemanticStore;
use super::entry::CachedReply;
use super::key::{CacheKey, Neighbourhood};
use crate::call::{CallKind, count_call};
use crate::provider::{EmbeddingRequest, Provider, ProviderError};

/// Longest a semantic lookup (the embedding and the query) may take before the request goes on
/// as a miss. It runs before the job's heartbeat starts, so it must stay well inside the job's
/// ack wait, and a provider that is slow to embed must not slow every cacheable request much.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The semantic tier of one worker.
pub struct SemanticTier {
    store: SemanticStore,
    /// The provider, behind the limits: embeddings are requests to it too.
    provider: Arc<dyn Provider>,
    /// `cache_semantic_model`.
    model: String,
    /// `cache_semantic_threshold`.
    threshold: f64,
}

/// A lookup's result.
pub struct Looked {
    /// The reply of a near enough request, and the exact key it is cached under.
    pub hit: Option<(CacheKey, CachedReply)>,
    /// What to store the reply with after a miss (`None` when there is no embedding).
    pub probe: Option<Probe>,
}

/// A request's neighbourhood and embedding, kept from its lookup to store its reply.
pub struct Probe {
    neighbourhood: CacheKey,
    embedding: Vec<f32>,
}

impl SemanticTier {
    /// The tier, with its table created, or `None` when the settings leave it off.
    ///
    /// # Errors
    /// The threshold is not between 0 and 1, or the table cannot be created (see
    /// [`SemanticStore::open`]).
    pub async fn open(
        settings: &CacheSettings,
        pool: Db,
        provider: Arc<dyn Provider>,
        ttl: Duration,
    ) -> anyhow::Result<Option<Self>> {
        if !settings.semantic {
            return Ok(None);
        }
        let threshold = settings.semantic_threshold;
        anyhow::ensure!(
            threshold > 0.0 && threshold <= 1.0,
            "CHATQ_CACHE_SEMANTIC_THRESHOLD must be above 0 and at most 1 (it is {threshold})"
        );
        let store = SemanticStore::open(pool, ttl)
            .await
            .context("the semantic reply cache cannot start")?;
        Ok(Some(Self {
            store,
            provider,
            model: settings.semantic_model.clone(),
            threshold,
        }))
    }

    /// The embedding model, which is part of every neighbourhood.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Embeds the question of `neighbourhood` and finds the nearest stored reply of its
    /// neighbourhood; a hit when it is at least the threshold alike.
    pub async fn lookup(&self, neighbourhood: Neighbourhood, lane: Lane) -> Looked {
        let looked = tokio::time::timeout(LOOKUP_TIMEOUT, self.try_lookup(neighbourhood, lane))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    timeout_ms = LOOKUP_TIMEOUT.as_millis() as u64,
                    "the semantic cache's lookup took too long; taking it as a miss"
                );
                Looked {
                    hit: None,
                    probe: None,
                }
            });
        let hit = looked.hit.is_some();
        let result = if hit { "hit" } else { "miss" };
        metrics::counter!(names::CACHE_LOOKUPS, "tier" => "semantic", "result" => result)
            .increment(1);
        if hit {
            metrics::counter!(names::CACHE_CALLS_SAVED).increment(1);
        }
        looked
    }

    async fn try_lookup(&self, neighbourhood: Neighbourhood, lane: Lane) -> Looked {
        let request = EmbeddingRequest {
            model: &self.model,
            input: &neighbourhood.question,
            lane,
        };
        let embedding = match embed_counted(self.provider.as_ref(), &request).await {
            Ok(embedding) => embedding,
            Err(err) => {
                tracing::warn!(error = %err, "cannot embed a request for the semantic cache; taking it as a miss");
                return Looked {
                    hit: None,
                    probe: None,
                };
            }
        };
        let nearest = match self.store.nearest(neighbourhood.key, &embedding).await {
            Ok(nearest) => nearest,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the semantic cache; taking it as a miss");
                None
            }
        };
        let hit = nearest
            .filter(|nearest| nearest.similarity >= self.threshold)
            .map(|nearest| {
                tracing::debug!(
                    similarity = nearest.similarity,
                    key = ?nearest.key,
                    "a near-duplicate's reply is served from the semantic cache"
                );
                (nearest.key, nearest.reply)
            });
        Looked {
            hit,
            probe: Some(Probe {
                neighbourhood: neighbourhood.key,
                embedding,
            }),
        }
    }

    /// Stores `reply`, cached under `key`, for later near-duplicates of the probed request.
    pub async fn store(&self, probe: Probe, key: CacheKey, reply: &CachedReply) {
        if let Err(err) = self
            .store
            .insert(probe.neighbourhood, &probe.embedding, key, reply)
            .await
        {
            tracing::warn!(?key, error = %err, "cannot store a reply in the semantic cache");
        }
    }

    /// Drops the reply cached under `key` (negative feedback on it).
    pub async fn forget(&self, key: CacheKey) {
        if let Err(err) = self.store.delete(key).await {
            tracing::warn!(?key, error = %err, "cannot drop a reply from the semantic cache");
        }
    }
}

/// Asks `provider` for an embedding, counted in `chatq_provider_calls_total` (`call="embedding"`)
/// like any provider call. A call the lookup gives up on ([`LOOKUP_TIMEOUT`]) is dropped
/// unfinished and counted as a `timeout`, even one still waiting for its turn at the limits.
async fn embed_counted(
    provider: &dyn Provider,
    request: &EmbeddingRequest<'_>,
) -> Result<Vec<f32>, ProviderError> {
    let mut call = EmbeddingCall { outcome: "timeout" };
    let result = provider.embed(request).await;
    call.outcome = match &result {
        Ok(_) => "ok",
        Err(err) => err.kind(),
    };
    result
}

/// Counts an embedding call once it has ended, or been dropped.
struct EmbeddingCall {
    outcome: &'static str,
}

impl Drop for EmbeddingCall {
    fn drop(&mut self) {
        count_call(CallKind::Embedding, self.outcome);
    }
}
