//! Worker heartbeats, as workers write them to the `<ns>_workers` KV bucket and the ingress reads
//! them for `GET /v1/admin/workers`.

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

/// What a worker reports about itself at every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// Jobs it may run at once now (after fleet shares and adaptive limits).
    pub concurrency: usize,
    /// `worker_concurrency`, as configured.
    pub configured_concurrency: usize,
    pub in_flight: usize,
    /// Jobs it finished (any outcome) since it started.
    pub processed: u64,
    /// Live workers as this one sees the fleet (its provider-limit shares divide by this).
    pub fleet_size: usize,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix milliseconds of this heartbeat.
    pub last_heartbeat_ms: i64,
}

/// Every live worker's last heartbeat, sorted by id.
///
/// # Errors
/// NATS is unreachable.
pub async fn read_statuses(store: &kv::Store) -> Result<Vec<WorkerStatus>, async_nats::Error> {
    let keys: Vec<String> = store.keys().await?.try_collect().await?;
    let mut statuses = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(value) = store.get(key).await?
            && let Ok(status) = serde_json::from_slice::<WorkerStatus>(&value)
        {
            statuses.push(status);
        }
    }
    statuses.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(statuses)
}
