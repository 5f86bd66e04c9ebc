//! The names the reply cache's shared tier uses, and evicting a reply from it, which the ingress
//! does when a client rates a cached reply down (the cache itself lives in the workers:
//! `chatq_workers::cache`).
//!
//! The bucket [`Topology::cache_bucket`] holds two kinds of keys:
//!
//! - `r.<hash>`: a cached reply, under the hex SHA-256 of everything that decides it;
//! - `m.<message id>`: the hash a conversation's reply message was served under, so feedback on
//!   that message can find and evict the reply.
//!
//! [`CacheTier`] names which tier served a reply, as a job's reply and its `job.started` event say.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use crate::ids::MessageId;
use crate::topology::Topology;

/// Which tier of the reply cache served a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheTier {
    /// The same request's reply (from a worker's memory or the shared tier), or the reply of an
    /// identical request's call under way at the same time.
    Exact,
    /// The reply of a request that differs only in the wording of its last user message, whose
    /// embedding is close enough (`cache_semantic_threshold`).
    Semantic,
}

impl CacheTier {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::Exact => "exact",
            CacheTier::Semantic => "semantic",
        }
    }

    /// The tier a stored name says, or `None` for a name this build does not know.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "exact" => Some(CacheTier::Exact),
            "semantic" => Some(CacheTier::Semantic),
            _ => None,
        }
    }
}

/// The key of a cached reply.
pub fn reply_key(hash_hex: &str) -> String {
    format!("r.{hash_hex}")
}

/// The key that points from a reply message to the hash it was served under.
pub fn message_key(message: MessageId) -> String {
    format!("m.{message}")
}

/// Drops the cached reply that `message` was served from, from the shared tier and (by a notice
/// on [`Topology::cache_evict_subject`]) from every worker's memory. Returns whether there was
/// one. Without a cache bucket (no worker runs the cache) there is nothing to evict.
///
/// # Errors
/// NATS failed while the bucket was read or written.
pub async fn evict_message(
    nats: &async_nats::Client,
    jetstream: &jetstream::Context,
    topology: &Topology,
    message: MessageId,
) -> Result<bool, async_nats::Error> {
    let Ok(store) = jetstream.get_key_value(topology.cache_bucket()).await else {
        return Ok(false);
    };
    let Some(hash) = store.get(message_key(message)).await? else {
        return Ok(false);
    };
    let hash = String::from_utf8_lossy(&hash).into_owned();
    store.delete(reply_key(&hash)).await?;
    nats.publish(topology.cache_evict_subject(), hash.into_bytes().into())
        .await?;
    nats.flush().await?;
    Ok(true)
}
