//! The locks that make a tenant's quotas hold across ingresses and workers.
//!
//! A check of a tenant's quota reads the tenant's usage and then writes: two checks of one tenant
//! at once could each see room for one more job and both add it. So a check takes a
//! transaction-scoped advisory lock on the tenant (keyed by the `chatq_tenant_lock_key` SQL
//! function) before it reads, and holds it until its transaction commits: the next check's read
//! is a statement that starts after that commit, so it counts what the first one wrote. Only
//! checks of the same quota wait for each other; claims and finishes of the tenant's jobs, which
//! change the usage through triggers, go on.
//!
//! Recordings of a busy tenant's jobs would then run one at a time, each holding the lock from
//! its read to its commit. So the queued-jobs lock has [`SLOTS`] slots, and a recording far
//! below the tenant's quota holds only one ([`Hold::Shared`]): the others it may run beside hold
//! the other slots, and each of them adds at most [`JOBS_PER_SLOT`] jobs of the tenant, so a
//! recording that leaves that much room per other slot cannot take the tenant past its quota. A
//! recording nearer the quota holds every slot ([`Hold::Exclusive`]) and counts exactly. The
//! in-flight lock has slots too: claims of a tenant without an in-flight quota hold one
//! ([`lock_in_flight`]).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI32, Ordering};

use uuid::Uuid;

use super::{OverQuota, Overrides, Quota};
use crate::ids::TenantId;

/// Slots of a tenant's queued-jobs and in-flight locks (the `& 7` of `chatq_tenant_lock_key`).
pub const SLOTS: i32 = 8;

/// Most jobs of one tenant a recording may add while it holds one slot. The ingress gathers at
/// most this many requests into one recording, so a recording of one tenant's jobs fits.
pub const JOBS_PER_SLOT: i32 = 128;

/// How a recording holds a tenant's queued-jobs lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// One slot: other recordings of the tenant far below its quota go on beside it.
    Shared,
    /// Every slot: no other recording of the tenant goes on until this one commits.
    Exclusive,
}

impl Hold {
    /// How to hold the lock to add up to `jobs` jobs to a tenant with `queued` jobs queued and a
    /// quota of `limit` (`None`: unlimited): shared if the quota would hold even if every other
    /// slot were held by a recording adding [`JOBS_PER_SLOT`] jobs, else exclusive.
    pub fn to_add(jobs: usize, queued: i32, limit: Option<u32>) -> Hold {
        let Ok(jobs) = i32::try_from(jobs) else {
            return Hold::Exclusive;
        };
        let others = i64::from(SLOTS - 1) * i64::from(JOBS_PER_SLOT);
        let fits = jobs <= JOBS_PER_SLOT
            && limit.is_none_or(|limit| {
                i64::from(queued) + i64::from(jobs) + others <= i64::from(limit)
            });
        if fits { Hold::Shared } else { Hold::Exclusive }
    }
}

/// A tenant's usage, read under its tenant lock, with its overrides.
#[derive(Debug, Clone, Copy, Default)]
pub struct LockedUsage {
    pub queued_jobs: i32,
    pub jobs_in_flight: i32,
    pub conversations: i32,
    /// The overrides of the quotas checked while writing (queued jobs, conversations).
    pub overrides: Overrides,
}

impl LockedUsage {
    /// The quota the tenant is at (so one more would pass it), with `setting` from the settings
    /// (`None`: unlimited) unless the tenant has an override; `None` while there is room.
    pub fn full(&self, quota: Quota, setting: Option<u32>) -> Option<OverQuota> {
        let held = match quota {
            Quota::QueuedJobs => self.queued_jobs,
            Quota::JobsInFlight => self.jobs_in_flight,
            Quota::Conversations => self.conversations,
            // Counted per ingress, in memory (`stream_slots`), never here.
            Quota::EventStreams => return None,
        };
        let limit = self.overrides.limit(quota, setting)?;
        (i64::from(held) >= i64::from(limit)).then_some(OverQuota { quota, limit })
    }
}

/// Takes these tenants' locks for checking `quota`, exclusively, until the transaction ends,
/// then reads their usage (the sum of each tenant's usage rows, see the `tenant_usage_shards`
/// migration) with their overrides.
///
/// # Errors
/// Database errors.
pub async fn lock_usage(
    tx: &mut sqlx::PgConnection,
    tenants: &[TenantId],
    quota: Quota,
) -> Result<HashMap<TenantId, LockedUsage>, sqlx::Error> {
    let holds: Vec<(TenantId, Hold)> = tenants.iter().map(|t| (*t, Hold::Exclusive)).collect();
    lock_and_read(tx, &holds, quota).await
}

/// Takes these tenants' queued-jobs locks as asked until the transaction ends, then reads their
/// usage as [`lock_usage`] does. A shared hold counts exactly only if the tenant is still as far
/// below its quota as [`Hold::to_add`] asks; when it is not, the caller must start again with
/// an exclusive hold (never add one to a shared hold in the same transaction: two recordings
/// doing so would wait for each other's slot).
///
/// # Errors
/// Database errors.
pub async fn lock_queued(
    tx: &mut sqlx::PgConnection,
    holds: &[(TenantId, Hold)],
) -> Result<HashMap<TenantId, LockedUsage>, sqlx::Error> {
    lock_and_read(tx, holds, Quota::QueuedJobs).await
}

async fn lock_and_read(
    tx: &mut sqlx::PgConnection,
    holds: &[(TenantId, Hold)],
    quota: Quota,
) -> Result<HashMap<TenantId, LockedUsage>, sqlx::Error> {
    if holds.is_empty() {
        return Ok(HashMap::new());
    }
    let slots = if quota == Quota::Conversations {
        1
    } else {
        SLOTS
    };
    // One slot per recording, taken in turn (from a random start, so that ingresses started
    // together do not pick the same ones): recordings of one process rarely meet on a slot.
    let shared = next_slot() % slots;
    let mut ids = Vec::with_capacity(holds.len());
    let mut first = Vec::with_capacity(holds.len());
    let mut count = Vec::with_capacity(holds.len());
    for (tenant, hold) in holds {
        ids.push(tenant.as_uuid());
        match hold {
            Hold::Shared => {
                first.push(shared);
                count.push(1);
            }
            Hold::Exclusive => {
                first.push(0);
                count.push(slots);
            }
        }
    }
    // Locks are taken in the order of their keys, so concurrent checks cannot deadlock.
    sqlx::query!(
        r#"SELECT count(pg_advisory_xact_lock($4, k)) AS "locked!"
             FROM (SELECT DISTINCT chatq_tenant_lock_key(h.tenant, s) AS k
                     FROM unnest($1::uuid[], $2::int4[], $3::int4[]) AS h(tenant, first, slots)
                    CROSS JOIN LATERAL generate_series(h.first, h.first + h.slots - 1) AS s
                    ORDER BY k OFFSET 0) keys"#,
        &ids,
        &first,
        &count,
        lock_class(quota),
    )
    .fetch_one(&mut *tx)
    .await?;
    ids.sort_unstable();
    ids.dedup();
    read_usage(tx, &ids).await
}

async fn read_usage(
    tx: &mut sqlx::PgConnection,
    tenants: &[Uuid],
) -> Result<HashMap<TenantId, LockedUsage>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT t.id AS "tenant_id!",
                  coalesce(sum(u.queued_jobs), 0)::int4 AS "queued_jobs!",
                  coalesce(sum(u.jobs_in_flight), 0)::int4 AS "jobs_in_flight!",
                  coalesce(sum(u.conversations), 0)::int4 AS "conversations!",
                  q.queued_jobs AS "queued_jobs_quota?", q.conversations AS "conversations_quota?"
             FROM unnest($1::uuid[]) AS t(id)
             LEFT JOIN tenant_usage u ON u.tenant_id = t.id
             LEFT JOIN tenant_quotas q ON q.tenant_id = t.id
            GROUP BY t.id, q.queued_jobs, q.conversations"#,
        tenants,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let usage = LockedUsage {
                queued_jobs: row.queued_jobs,
                jobs_in_flight: row.jobs_in_flight,
                conversations: row.conversations,
                overrides: Overrides {
                    queued_jobs: row.queued_jobs_quota,
                    conversations: row.conversations_quota,
                    ..Overrides::default()
                },
            };
            (TenantId::from_uuid(row.tenant_id), usage)
        })
        .collect())
}

/// Takes the in-flight lock of the tenants of these jobs that a claim would start (queued
/// interactive jobs) until the transaction ends: claims of one tenant's jobs take turns, so each
/// counts the jobs the one before it started, and the `jobs_in_flight` quota (`max_in_flight`
/// from the settings, or the tenant's override) holds across workers. A tenant without that quota
/// has nothing to count: its claims hold one slot of the lock, and go on side by side. (A quota
/// set while they run applies to the claims that start after they commit; a claim that started
/// before may still start one batch of jobs beyond it.) Nothing else takes this lock:
/// recordings, finishes and claims of other tenants' jobs go on.
///
/// # Errors
/// Database errors.
pub async fn lock_in_flight(
    tx: &mut sqlx::PgConnection,
    jobs: &[Uuid],
    max_in_flight: Option<u32>,
) -> Result<(), sqlx::Error> {
    // The jobs are found by their key alone: a condition on the status could lead the planner
    // to read every queued job through the partial indexes on it (see `jobs::claim`).
    sqlx::query!(
        r#"SELECT count(pg_advisory_xact_lock($2, k)) AS "locked!"
             FROM (SELECT DISTINCT chatq_tenant_lock_key(t.tenant_id, s) AS k
                     FROM (SELECT DISTINCT j.tenant_id,
                                  chatq_quota(q.jobs_in_flight, $3) = 2147483647 AS unlimited
                             FROM (SELECT CASE WHEN lane = 'interactive' AND status = 'queued'
                                               THEN tenant_id END AS tenant_id
                                     FROM jobs WHERE id = ANY($1)) j
                             LEFT JOIN tenant_quotas q ON q.tenant_id = j.tenant_id
                            WHERE j.tenant_id IS NOT NULL) t
                    CROSS JOIN LATERAL generate_series(CASE WHEN t.unlimited THEN $4 ELSE 0 END,
                                                       CASE WHEN t.unlimited THEN $4 ELSE $5 - 1 END) AS s
                    ORDER BY k OFFSET 0) keys"#,
        jobs,
        lock_class(Quota::JobsInFlight),
        super::stored_setting(max_in_flight),
        next_slot() % SLOTS,
        SLOTS,
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(())
}

/// The next shared slot this process takes.
fn next_slot() -> i32 {
    static NEXT: LazyLock<AtomicI32> =
        LazyLock::new(|| AtomicI32::new(i32::from(rand::random::<u8>())));
    NEXT.fetch_add(1, Ordering::Relaxed) & i32::MAX
}

/// The first key of the advisory lock that checks of `quota` take (the second is the tenant's
/// slot key, `chatq_tenant_lock_key`): "cq" and two letters of the quota in ASCII, so they are
/// recognisable in `pg_locks`. (Event streams are counted per ingress, in memory, and never
/// locked here.)
fn lock_class(quota: Quota) -> i32 {
    match quota {
        Quota::QueuedJobs => 0x6371_716a,    // cqqj
        Quota::JobsInFlight => 0x6371_6966,  // cqif
        Quota::EventStreams => 0x6371_6573,  // cqes
        Quota::Conversations => 0x6371_636f, // cqco
    }
}
