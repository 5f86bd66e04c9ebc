//! The shared tier: replies in the NATS KV bucket `<ns>_cache`, so every worker of the fleet, and
//! a worker that restarted, is served what any of them stored. The bucket's TTL is the cache's;
//! keys are named by [`chatq_common::reply_cache`].
//!
//! The shared tier is an optimisation: an error reading or writing it is logged and counted as a
//! miss, and the request goes to the provider as if there were no cache.

use std::time::Duration;

use async_nats::jetstream::kv::Store;
use chatq_common::ids::MessageId;
use chatq_common::reply_cache::{message_key, reply_key};

use super::entry::CachedReply;
use super::key::CacheKey;

/// The shared tier's bucket.
#[derive(Clone)]
pub struct SharedTier {
    replies: Store,
}

impl SharedTier {
    pub fn new(replies: Store) -> Self {
        Self { replies }
    }

    pub fn store(&self) -> &Store {
        &self.replies
    }

    /// The reply stored under `key`, if any (a reply that cannot be read is a miss).
    pub async fn get(&self, key: CacheKey) -> Option<CachedReply> {
        match self.replies.get(reply_key(&key.hex())).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .inspect_err(|err| {
                    tracing::warn!(?key, error = %err, "a shared cache entry cannot be read; ignoring it");
                })
                .ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(?key, error = %err, "cannot read the shared reply cache");
                None
            }
        }
    }

    pub async fn put(&self, key: CacheKey, reply: &CachedReply) {
        let Ok(bytes) = serde_json::to_vec(reply) else {
            return;
        };
        if let Err(err) = self.replies.put(reply_key(&key.hex()), bytes.into()).await {
            tracing::warn!(?key, error = %err, "cannot store a reply in the shared cache");
        }
    }

    /// Remembers that the reply message `message` was served from `key`, so negative feedback on
    /// it can evict the reply.
    pub async fn index_message(&self, message: MessageId, key: CacheKey) {
        if let Err(err) = self
            .replies
            .put(message_key(message), key.hex().into_bytes().into())
            .await
        {
            tracing::warn!(?key, error = %err, "cannot index a cached reply's message");
        }
    }

    /// Watches `key` until a reply is stored under it, or `give_up` resolves.
    pub async fn wait_for(
        &self,
        key: CacheKey,
        give_up: impl std::future::Future<Output = ()>,
    ) -> Option<CachedReply> {
        use futures::StreamExt as _;
        let name = reply_key(&key.hex());
        let mut watch = match self.replies.watch_with_history(&name).await {
            Ok(watch) => watch,
            Err(err) => {
                tracing::warn!(?key, error = %err, "cannot watch the shared reply cache");
                // Without a watch, look once more after a moment rather than not at all.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return self.get(key).await;
            }
        };
        tokio::pin!(give_up);
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                        return serde_json::from_slice(&entry.value).ok();
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        tracing::warn!(?key, error = %err, "the shared reply cache's watch failed");
                        return self.get(key).await;
                    }
                    None => return self.get(key).await,
                },
                () = &mut give_up => return None,
            }
        }
    }
}
