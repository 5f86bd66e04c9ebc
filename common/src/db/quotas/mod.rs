//! Per-tenant quotas: what a tenant holds (`tenant_usage`, kept by triggers on `jobs` and
//! `conversations`, so a check reads one row instead of counting) and the overrides operators set
//! (`tenant_quotas`, `chatq tenants set-quota`), which win over the `tenant_max_*` settings.
//!
//! A tenant's usage is spread over 64 rows, so that writes of one tenant's jobs do not wait for
//! each other: each statement's change goes to one row, chosen by the ids it changed (the
//! `usage_row_per_statement` migration); a check adds them up.
//! A check that must hold across ingress processes takes the tenant's quota lock for the
//! transaction that writes ([`locks`]).

mod locks;

use crate::db::Db;

use crate::ids::TenantId;

pub use self::locks::{Hold, LockedUsage, lock_in_flight, lock_queued, lock_usage};

/// A quota, as it is named in errors, in `tenant_quotas` and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    QueuedJobs,
    JobsInFlight,
    EventStreams,
    Conversations,
}

impl Quota {
    pub const ALL: [Quota; 4] = [
        Quota::QueuedJobs,
        Quota::JobsInFlight,
        Quota::EventStreams,
        Quota::Conversations,
    ];

    /// `queued_jobs`: the column, and the `param` of a 429.
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::QueuedJobs => "queued_jobs",
            Quota::JobsInFlight => "jobs_in_flight",
            Quota::EventStreams => "event_streams",
            Quota::Conversations => "conversations",
        }
    }
}

/// A tenant over one of its quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverQuota {
    pub quota: Quota,
    /// The quota that applies to this tenant (its override, or the setting).
    pub limit: u32,
}

/// A tenant's overrides as stored: `None` keeps the setting; "unlimited" is stored as
/// `i32::MAX` (see [`effective`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub queued_jobs: Option<i32>,
    pub jobs_in_flight: Option<i32>,
    pub event_streams: Option<i32>,
    pub conversations: Option<i32>,
}

impl Overrides {
    /// The override of one quota, as stored; `None` when the tenant has none.
    pub fn stored(&self, quota: Quota) -> Option<i32> {
        match quota {
            Quota::QueuedJobs => self.queued_jobs,
            Quota::JobsInFlight => self.jobs_in_flight,
            Quota::EventStreams => self.event_streams,
            Quota::Conversations => self.conversations,
        }
    }

    /// The limit of one quota for this tenant: its override, else `setting`; `None` is unlimited.
    pub fn limit(&self, quota: Quota, setting: Option<u32>) -> Option<u32> {
        effective(self.stored(quota), setting)
    }
}

/// What `chatq tenants set-quota` asks to change one quota to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaChange {
    /// Back to the setting.
    Default,
    Unlimited,
    Limit(u32),
}

impl std::str::FromStr for QuotaChange {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim() {
            "default" => Ok(QuotaChange::Default),
            "unlimited" => Ok(QuotaChange::Unlimited),
            number => number
                .parse::<u32>()
                .ok()
                .filter(|n| i32::try_from(*n).is_ok())
                .map(QuotaChange::Limit)
                .ok_or_else(|| format!("`{number}` is not a number, `unlimited` or `default`")),
        }
    }
}

impl QuotaChange {
    /// The stored value, and whether to change the column at all.
    fn stored(change: Option<Self>) -> (bool, Option<i32>) {
        match change {
            None => (false, None),
            Some(QuotaChange::Default) => (true, None),
            Some(QuotaChange::Unlimited) => (true, Some(i32::MAX)),
            Some(QuotaChange::Limit(n)) => (true, Some(i32::try_from(n).unwrap_or(i32::MAX))),
        }
    }
}

/// A setting as the SQL rule `chatq_quota(override, setting)` takes it: `None` (unlimited) as
/// SQL's `NULL`, a limit beyond `i32` as unlimited (`i32::MAX`, as stored).
pub fn stored_setting(setting: Option<u32>) -> Option<i32> {
    setting.map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

/// The limit that applies: the tenant's override, else the setting; `None` is unlimited. (The
/// same rule in SQL, for the statements that decide a quota there, is the function
/// `chatq_quota`.)
pub fn effective(stored: Option<i32>, setting: Option<u32>) -> Option<u32> {
    match stored {
        Some(i32::MAX) => None,
        Some(n) => Some(u32::try_from(n).unwrap_or(0)),
        None => setting,
    }
}

/// A tenant's overrides (all `None` when it has none).
///
/// # Errors
/// Database errors.
pub async fn overrides(pool: &Db, tenant: TenantId) -> Result<Overrides, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT queued_jobs, jobs_in_flight, event_streams, conversations
           FROM tenant_quotas WHERE tenant_id = $1",
        tenant.as_uuid(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map_or_else(Overrides::default, |row| Overrides {
        queued_jobs: row.queued_jobs,
        jobs_in_flight: row.jobs_in_flight,
        event_streams: row.event_streams,
        conversations: row.conversations,
    }))
}

/// The changes `chatq tenants set-quota` makes; `None` leaves a quota as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaChanges {
    pub queued_jobs: Option<QuotaChange>,
    pub jobs_in_flight: Option<QuotaChange>,
    pub event_streams: Option<QuotaChange>,
    pub conversations: Option<QuotaChange>,
}

/// Sets a tenant's overrides, by tenant name. Returns the overrides now stored, or `None` when
/// there is no such tenant.
///
/// # Errors
/// Database errors.
pub async fn set_overrides(
    pool: &Db,
    tenant: &str,
    changes: QuotaChanges,
) -> Result<Option<(TenantId, Overrides)>, sqlx::Error> {
    let (set_queued, queued) = QuotaChange::stored(changes.queued_jobs);
    let (set_flight, flight) = QuotaChange::stored(changes.jobs_in_flight);
    let (set_streams, streams) = QuotaChange::stored(changes.event_streams);
    let (set_conversations, conversations) = QuotaChange::stored(changes.conversations);
    let row = sqlx::query!(
        r#"INSERT INTO tenant_quotas AS q (tenant_id, queued_jobs, jobs_in_flight, event_streams, conversations)
           SELECT id, $2, $4, $6, $8 FROM tenants WHERE name = $1
               ON CONFLICT (tenant_id) DO UPDATE
              SET queued_jobs = CASE WHEN $3 THEN excluded.queued_jobs ELSE q.queued_jobs END,
                  jobs_in_flight = CASE WHEN $5 THEN excluded.jobs_in_flight ELSE q.jobs_in_flight END,
                  event_streams = CASE WHEN $7 THEN excluded.event_streams ELSE q.event_streams END,
                  conversations = CASE WHEN $9 THEN excluded.conversations ELSE q.conversations END
           RETURNING tenant_id, queued_jobs, jobs_in_flight, event_streams, conversations"#,
        tenant,
        queued,
        set_queued,
        flight,
        set_flight,
        streams,
        set_streams,
        conversations,
        set_conversations,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| {
        let overrides = Overrides {
            queued_jobs: row.queued_jobs,
            jobs_in_flight: row.jobs_in_flight,
            event_streams: row.event_streams,
            conversations: row.conversations,
        };
        (TenantId::from_uuid(row.tenant_id), overrides)
    }))
}
