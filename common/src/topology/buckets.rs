//! The KV buckets (streams in the KV layout): worker heartbeats, rate-limit leases, and the
//! reply cache with its in-flight markers. Part of [`Topology`]: names and configurations
//! derived from the namespace and the settings.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};

use super::{DUPLICATE_WINDOW, Topology, TopologyError, ensure_stream};

impl Topology {
    /// `chatq_workers`: the KV bucket of worker heartbeats.
    pub fn workers_bucket(&self) -> String {
        format!("{}_workers", self.namespace)
    }

    /// The stream behind the workers bucket, in the KV layout (`KV_<bucket>`, subjects
    /// `$KV.<bucket>.>`, one value per key). Created as a plain stream because the client's KV
    /// creation first reads account details that NATS 2.9 does not send. Heartbeats live in
    /// memory (they are rebuilt within a heartbeat after a restart) and expire three heartbeats
    /// after a worker's last, which is how a dead worker leaves the fleet.
    pub fn workers_bucket_stream_config(&self) -> stream::Config {
        let bucket = self.workers_bucket();
        let max_age = self.heartbeat * 3;
        stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("chatq worker heartbeats".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: StorageType::Memory,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            duplicate_window: max_age.min(DUPLICATE_WINDOW),
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// `chatq_leases`: the KV bucket of capacity leases (see `chatq_workers::leases`).
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.namespace)
    }

    /// How long a capacity lease lasts after its last renewal: three heartbeats, so a renewal
    /// that fails once or twice (a leader election) costs nothing.
    pub fn lease_ttl(&self) -> Duration {
        self.heartbeat * 3
    }

    /// The stream behind the leases bucket, in the KV layout. Leases are kept on file: after a
    /// server restart a lease must still be there until it expires, or another worker could take
    /// capacity its holder is still using.
    pub fn leases_bucket_stream_config(&self) -> stream::Config {
        let bucket = self.leases_bucket();
        let max_age = self.lease_ttl();
        stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("chatq capacity leases".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            duplicate_window: max_age.min(DUPLICATE_WINDOW),
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// `chatq_cache`: the shared tier of the reply cache (see `chatq_workers::cache`).
    pub fn cache_bucket(&self) -> String {
        format!("{}_cache", self.namespace)
    }

    /// `chatq_cache_flights`: markers of provider calls under way for cacheable requests, so
    /// identical requests on other workers wait for the reply instead of calling again.
    pub fn cache_flights_bucket(&self) -> String {
        format!("{}_cache_flights", self.namespace)
    }

    /// `chatq.control.cache.evict`: tells every worker to drop a reply from its memory tier.
    pub fn cache_evict_subject(&self) -> String {
        format!("{}.control.cache.evict", self.namespace)
    }

    /// The stream behind the cache bucket, in the KV layout. Replies are kept on file, so they
    /// outlive a NATS restart, and expire `ttl` after they were stored.
    pub fn cache_bucket_stream_config(&self, ttl: Duration) -> stream::Config {
        kv_stream_config(
            self.cache_bucket(),
            "chatq reply cache",
            ttl.max(Duration::from_secs(1)),
            StorageType::File,
            self.replicas,
        )
    }

    /// The stream behind the flights bucket: markers live in memory and expire `ttl` after their
    /// holder last refreshed them, so a holder that died blocks nobody for longer.
    pub fn cache_flights_stream_config(&self, ttl: Duration) -> stream::Config {
        kv_stream_config(
            self.cache_flights_bucket(),
            "chatq provider calls under way",
            ttl,
            StorageType::Memory,
            self.replicas,
        )
    }

    /// Creates or updates the two buckets of the reply cache. Only workers with the cache on
    /// need them, and only they know its TTL, so [`Topology::ensure`] leaves them out.
    ///
    /// # Errors
    /// As [`Topology::ensure`].
    pub async fn ensure_cache_buckets(
        &self,
        js: &Context,
        ttl: Duration,
        flight_ttl: Duration,
    ) -> Result<(), TopologyError> {
        ensure_stream(js, self.cache_bucket_stream_config(ttl)).await?;
        ensure_stream(js, self.cache_flights_stream_config(flight_ttl)).await?;
        Ok(())
    }
}

/// A stream in the KV layout (`KV_<bucket>`, subjects `$KV.<bucket>.>`, one value per key)
/// whose keys expire `max_age` after their last put.
fn kv_stream_config(
    bucket: String,
    description: &str,
    max_age: Duration,
    storage: StorageType,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        duplicate_window: max_age.min(DUPLICATE_WINDOW),
        num_replicas: replicas,
        ..Default::default()
    }
}
