//! The queued-jobs quota of a batch being recorded: which tenants' locks it takes and how, and
//! whether each job still fits, counting the jobs of the batch decided before it.

use std::collections::{HashMap, HashSet};

use super::NewJob;
use crate::db::quotas::{self, Hold, OverQuota, Quota};
use crate::ids::TenantId;
use crate::job::Lane;

/// The queued-jobs quotas of the batch's tenants, under their tenant locks until the batch
/// commits, so that the quota holds across all ingresses (see [`quotas::lock_queued`]).
pub(super) struct QueuedQuotas {
    usage: HashMap<TenantId, quotas::LockedUsage>,
}

impl QueuedQuotas {
    /// Takes the locks of the tenants of the batch's interactive jobs: exclusively for those in
    /// `exclusive`, and for those too near their quota to share it; shared otherwise. Fails with
    /// the tenants held shared that turn out to be too near their quota (the batch must start
    /// again, holding them exclusively).
    pub(super) async fn lock(
        tx: &mut sqlx::PgConnection,
        jobs: &[NewJob],
        exclusive: &HashSet<TenantId>,
    ) -> Result<Result<Self, Vec<TenantId>>, sqlx::Error> {
        // Per tenant: its jobs in the batch, and the quota the settings give it.
        let mut tenants: HashMap<TenantId, (usize, Option<u32>)> = HashMap::new();
        for job in jobs.iter().filter(|job| job.lane == Lane::Interactive) {
            let (count, setting) = tenants.entry(job.tenant).or_insert((0, job.max_queued));
            *count += 1;
            *setting = match (*setting, job.max_queued) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let holds: Vec<(TenantId, Hold)> = tenants
            .iter()
            .map(|(tenant, (count, setting))| {
                let hold = if exclusive.contains(tenant) {
                    Hold::Exclusive
                } else {
                    Hold::to_add(*count, 0, *setting)
                };
                (*tenant, hold)
            })
            .collect();
        let usage = quotas::lock_queued(tx, &holds).await?;
        let near: Vec<TenantId> = holds
            .iter()
            .filter(|(_, hold)| *hold == Hold::Shared)
            .filter_map(|(tenant, _)| {
                let (count, setting) = tenants[tenant];
                let usage = usage.get(tenant)?;
                let limit = usage.overrides.limit(Quota::QueuedJobs, setting);
                (Hold::to_add(count, usage.queued_jobs, limit) == Hold::Exclusive)
                    .then_some(*tenant)
            })
            .collect();
        Ok(if near.is_empty() {
            Ok(Self { usage })
        } else {
            Err(near)
        })
    }

    /// Whether the job fits in its tenant's quota, counting the jobs of the batch decided before it.
    pub(super) fn check(&self, job: &NewJob) -> Result<(), OverQuota> {
        match self.usage.get(&job.tenant) {
            Some(usage) if job.lane == Lane::Interactive => usage
                .full(Quota::QueuedJobs, job.max_queued)
                .map_or(Ok(()), Err),
            _ => Ok(()),
        }
    }

    /// Counts a job the batch records; returns the tenant's jobs queued ahead of it.
    pub(super) fn count(&mut self, job: &NewJob) -> i32 {
        match self.usage.get_mut(&job.tenant) {
            Some(usage) if job.lane == Lane::Interactive => {
                usage.queued_jobs += 1;
                usage.queued_jobs - 1
            }
            _ => 0,
        }
    }
}
