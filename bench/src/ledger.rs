//! What the scratch database says happened to the jobs a scenario made: the ledger a figure is
//! checked against (every accepted job reached a terminal state, every streamed reply is the
//! stored one) and the system's own timings of each job (queue wait, provider call).
//!
//! These queries are plain `sqlx::query_as`, checked when they run rather than at build time
//! against `.sqlx/`: they read only the bench's scratch database, and the bench can change what
//! it reports without refreshing the offline query data of the server's crates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chatq_common::db::Db;
use uuid::Uuid;

use super::figures::thousands;
use super::{fixtures, progress};

/// One job, as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    pub id: Uuid,
    pub conversation_id: Option<Uuid>,
    pub status: String,
    /// `created_at` to `started_at`, in milliseconds, at the database's microsecond precision.
    pub wait_ms: Option<f64>,
    /// The provider call, as the worker timed it (whole milliseconds).
    pub upstream_ms: Option<i32>,
    /// The provider's time to first token, as the worker timed it (whole milliseconds).
    pub ttft_ms: Option<i32>,
    pub reply_content: Option<String>,
}

/// The jobs with these ids (those that exist).
///
/// # Errors
/// Database errors.
pub async fn jobs_by_id(pool: &Db, ids: &[Uuid]) -> anyhow::Result<Vec<JobRecord>> {
    sqlx::query_as(
        "SELECT id, conversation_id, status,
                extract(epoch FROM started_at - created_at)::float8 * 1000 AS wait_ms,
                upstream_ms, ttft_ms, reply_content
           FROM jobs WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .context("cannot read the jobs of the run")
}

/// The jobs of these conversations.
///
/// # Errors
/// Database errors.
pub async fn jobs_of_conversations(
    pool: &Db,
    conversations: &[Uuid],
) -> anyhow::Result<Vec<JobRecord>> {
    sqlx::query_as(
        "SELECT id, conversation_id, status,
                extract(epoch FROM started_at - created_at)::float8 * 1000 AS wait_ms,
                upstream_ms, ttft_ms, reply_content
           FROM jobs WHERE conversation_id = ANY($1)",
    )
    .bind(conversations)
    .fetch_all(pool)
    .await
    .context("cannot read the jobs of the run")
}

/// The jobs of these conversations once every one has ended, or as they stand after `timeout`.
///
/// # Errors
/// Database errors.
pub async fn jobs_of_conversations_ended(
    pool: &Db,
    conversations: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<Vec<JobRecord>> {
    let waiting = Instant::now();
    loop {
        let jobs = jobs_of_conversations(pool, conversations).await?;
        let ended = jobs.iter().all(|job| is_terminal(&job.status));
        if ended || waiting.elapsed() > timeout {
            return Ok(jobs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until no job is queued or running; `false` if that took longer than `timeout` from
/// `started`.
///
/// # Errors
/// Database errors.
pub async fn drain(pool: &Db, started: Instant, timeout: Duration) -> anyhow::Result<bool> {
    let spinner = progress::step("draining");
    loop {
        let active = fixtures::active_jobs(pool).await?;
        if active == 0 {
            spinner.finish_and_clear();
            return Ok(true);
        }
        if started.elapsed() > timeout {
            spinner.finish_and_clear();
            return Ok(false);
        }
        spinner.set_message(format!("{active} jobs queued or running"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Jobs of a lane (or of both, for `None`) with a status.
///
/// # Errors
/// Database errors.
pub async fn count(pool: &Db, lane: Option<&str>, status: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = $1 AND ($2::text IS NULL OR lane = $2)",
    )
    .bind(status)
    .bind(lane)
    .fetch_one(pool)
    .await
    .context("cannot count jobs")
}

/// Jobs of a tenant with a status.
///
/// # Errors
/// Database errors.
pub async fn count_of_tenant(pool: &Db, tenant: Uuid, status: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = $1 AND tenant_id = $2")
        .bind(status)
        .bind(tenant)
        .fetch_one(pool)
        .await
        .context("cannot count a tenant's jobs")
}

/// Every job of the run, by status.
///
/// # Errors
/// Database errors.
pub async fn count_by_status(pool: &Db) -> anyhow::Result<BTreeMap<String, u64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status::text, count(*) FROM jobs GROUP BY status")
            .fetch_all(pool)
            .await
            .context("cannot count the jobs by status")?;
    Ok(rows
        .into_iter()
        .map(|(status, count)| (status, u64::try_from(count).unwrap_or(0)))
        .collect())
}

/// `status × count`, for the report.
pub fn by_status<'a>(jobs: impl Iterator<Item = &'a JobRecord>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for job in jobs {
        *counts.entry(job.status.clone()).or_default() += 1;
    }
    counts
}

/// `succeeded × 3,000, failed × 2`.
pub fn describe(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(status, count)| format!("{status} × {}", thousands(*count as f64)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a status is one a job never leaves.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled" | "expired")
}
