//! Event stream slots: every response that holds a stream open (job events, a streamed chat
//! completion, a Responses stream) holds one [`StreamSlot`] while it lasts.
//!
//! Two bounds, both of this ingress (streams live in one process, so they are counted there):
//! `max_event_streams` for all tenants together (503 beyond it: the server is full), and a
//! tenant's `event_streams` quota (429 beyond it: that tenant is), which is
//! `tenant_max_event_streams` or the tenant's override. Overrides are read from Postgres and
//! remembered for [`OVERRIDE_TTL`], so `chatq tenants set-quota` takes effect within that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chatq_common::db::Db;
use chatq_common::db::quotas::{self, OverQuota, Quota};
use chatq_common::ids::TenantId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ApiResult};

/// How long a tenant's stream quota override is used before it is read again.
pub const OVERRIDE_TTL: Duration = Duration::from_secs(10);

/// A tenant's stream quota override as last read (`None`: it has none), and when.
type ReadOverride = (Option<i32>, Instant);

/// The slots of this ingress. Cloning shares them.
#[derive(Clone)]
pub struct StreamSlots {
    total: Arc<Semaphore>,
    max_total: usize,
    /// `tenant_max_event_streams`; `None` is unlimited.
    per_tenant: Option<u32>,
    open: Arc<Mutex<HashMap<TenantId, u32>>>,
    /// Each tenant's override as last read, and when.
    overrides: Arc<Mutex<HashMap<TenantId, ReadOverride>>>,
    pool: Db,
}

/// One open stream: gives its slot back when dropped.
pub struct StreamSlot {
    _total: OwnedSemaphorePermit,
    tenant: TenantId,
    open: Arc<Mutex<HashMap<TenantId, u32>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl StreamSlots {
    pub fn new(max_total: usize, per_tenant: Option<u32>, pool: Db) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            per_tenant,
            open: Arc::default(),
            overrides: Arc::default(),
            pool,
        }
    }

    /// Streams open now, of every tenant.
    pub fn open_count(&self) -> usize {
        self.max_total - self.total.available_permits()
    }

    /// Reserves a slot for one of the tenant's streams: 429 when the tenant holds its quota of
    /// streams here, 503 when this ingress holds `max_event_streams`.
    ///
    /// # Errors
    /// As above, and database errors reading the tenant's override.
    pub async fn open(&self, tenant: TenantId) -> ApiResult<StreamSlot> {
        let limit = self.limit(tenant).await?;
        let total = self.total.clone().try_acquire_owned().map_err(|_| ApiError::Overloaded {
            message: "This server holds as many event streams as it allows. Retry shortly, or poll GET /v1/jobs/{id}.".into(),
            retry_after: Duration::from_secs(5),
        })?;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(tenant).or_default();
        if let Some(limit) = limit
            && *count >= limit
        {
            return Err(ApiError::over_quota(OverQuota {
                quota: Quota::EventStreams,
                limit,
            }));
        }
        *count += 1;
        Ok(StreamSlot {
            _total: total,
            tenant,
            open: self.open.clone(),
        })
    }

    /// The tenant's stream quota: its override (read at most every [`OVERRIDE_TTL`]), else the
    /// setting.
    async fn limit(&self, tenant: TenantId) -> ApiResult<Option<u32>> {
        let cached = self
            .overrides
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
            .filter(|(_, read)| read.elapsed() < OVERRIDE_TTL)
            .map(|(stored, _)| *stored);
        let stored = match cached {
            Some(stored) => stored,
            None => {
                let stored = quotas::overrides(&self.pool, tenant).await?.event_streams;
                self.overrides
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(tenant, (stored, Instant::now()));
                stored
            }
        };
        Ok(quotas::effective(stored, self.per_tenant))
    }
}
