//! `chatq tenants set-quota`: a tenant's own quotas, straight against Postgres.
//!
//! Queued jobs, jobs in flight and conversations are checked against Postgres on every request,
//! so a change takes effect at once; an ingress reads a tenant's event-stream quota again every
//! ten seconds.

use chatq_common::db::quotas::{self, Quota, QuotaChanges};
use chatq_common::{Settings, db};

/// Sets the given quotas of one tenant and prints the quotas it has now, one per line.
pub async fn set_quota(
    settings: Settings,
    tenant: &str,
    changes: QuotaChanges,
) -> anyhow::Result<()> {
    let pool = db::connect(&settings.database).await?;
    db::migrate(&pool).await?;
    let Some((_, overrides)) = quotas::set_overrides(&pool, tenant.trim(), changes).await? else {
        anyhow::bail!("no tenant named \"{tenant}\" (`chatq keys list` shows the tenants)");
    };
    let limits = &settings.limits;
    let mut out = String::from("quota\tlimit\tfrom\n");
    for quota in Quota::ALL {
        let setting = match quota {
            Quota::QueuedJobs => limits.tenant_max_queued_jobs,
            Quota::JobsInFlight => limits.tenant_max_jobs_in_flight,
            Quota::EventStreams => limits.tenant_max_event_streams,
            Quota::Conversations => limits.tenant_max_conversations,
        };
        let from = if overrides.stored(quota).is_some() {
            "tenant"
        } else {
            "setting"
        };
        let limit = overrides
            .limit(quota, setting)
            .map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
        out.push_str(&format!("{}\t{limit}\t{from}\n", quota.as_str()));
    }
    #[expect(clippy::print_stdout, reason = "the command's output")]
    {
        print!("{out}");
    }
    Ok(())
}
