//! The names the reply cache's shared tier uses, and evicting a reply from it, which the ingress
//! does when a client rates a cached reply down (the cache itself lives in the workers:
//! `chatq_workers::cache`).
//!
//! The bucket [`Topology::cache_bucket`] holds two kinds of keys:
//!
//! - `r.<hash>`: a cached reply, under the hex SHA-256 of everything that decides it;
//! - `m.<message id>`: the hash a conversation's reply message was served under, so feedback on
//!   that message can find and evict the reply.

use async_nats::jetstream;

use crate::ids::MessageId;
use crate::topology::Topology;

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
