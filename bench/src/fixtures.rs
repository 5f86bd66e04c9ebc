//! What the bench sets up in the scratch database before a load, and reads back after it:
//! conversations created in bulk (one per request, since a conversation accepts one pending job
//! at a time), backlogs of jobs queued without HTTP, and the jobs' outcomes afterwards.
//!
//! Every write goes through chatq's own database and queue functions (`chatq_common::db`,
//! `chatq_common::queue`), so what the bench sets up is what chatq itself would have written;
//! only the reads, for the report, are the bench's own SQL. They touch only the bench's own
//! scratch database.

use std::collections::BTreeMap;

use anyhow::Context as _;
use chatq_common::chat::{ChatMessage, GenerationParams, Role};
use chatq_common::db::Db;
use chatq_common::db::conversations;
use chatq_common::db::jobs::{self, NewJob};
use chatq_common::ids::{JobId, TenantId};
use chatq_common::job::{JobRequest, Lane};
use chatq_common::queue::publish_job;
use futures::{StreamExt as _, TryStreamExt as _};
use uuid::Uuid;

use super::progress;
use super::scratch::Scratch;

/// Most conversations inserted by one statement.
const INSERT_CHUNK: usize = 50_000;

/// Creates `count` empty conversations for the tenant and returns their ids (UUIDv7, in order).
/// Far faster than `count` HTTP requests, and not part of what is measured.
///
/// # Errors
/// Database errors.
pub async fn create_conversations(
    pool: &Db,
    tenant: Uuid,
    count: usize,
) -> anyhow::Result<Vec<Uuid>> {
    let tenant = TenantId::from_uuid(tenant);
    let mut ids = Vec::with_capacity(count);
    let mut left = count;
    while left > 0 {
        let chunk = left.min(INSERT_CHUNK);
        let created = conversations::create_many(pool, tenant, Some("bench"), chunk)
            .await
            .context("cannot create the bench's conversations")?;
        ids.extend(created.into_iter().map(|id| id.as_uuid()));
        left -= chunk;
    }
    Ok(ids)
}

/// Jobs recorded and published at once while a backlog is queued.
const QUEUE_IN_FLIGHT: usize = 64;

/// Queues `count` chat-completion jobs on `lane` without HTTP, the way a batch submission does:
/// each recorded (`jobs::record`), then published and its acknowledgement awaited. Each
/// prompt is different, so no reply could be shared between jobs.
///
/// # Errors
/// Database or JetStream errors (a full queue included).
pub async fn queue_completions(
    scratch: &Scratch,
    tenant: Uuid,
    lane: Lane,
    count: usize,
    deadline_secs: f64,
) -> anyhow::Result<Vec<JobId>> {
    let bar = progress::counted(&format!("queueing {lane} jobs"), count as u64);
    let tenant = TenantId::from_uuid(tenant);
    let ids: Vec<JobId> = futures::stream::iter(0..count)
        .map(|index| async move {
            let job_id = JobId::new();
            let request = JobRequest::ChatCompletion {
                params: GenerationParams {
                    model: super::stack::MODEL.into(),
                    ..GenerationParams::default()
                },
                body: None,
                messages: vec![ChatMessage::new(
                    Role::User,
                    format!("Item {index}: summarise the plot of Moby-Dick in three sentences."),
                )],
            };
            let new = NewJob {
                id: job_id,
                tenant,
                lane,
                request,
                model: Some(super::stack::MODEL.into()),
                default_model: None,
                idempotency: None,
                deadline_secs,
                max_queued: None,
                turn: None,
                trace: None,
            };
            jobs::record(&scratch.pool, &[new])
                .await
                .context("cannot record a job")?;
            publish_job(&scratch.jetstream, &scratch.topology, job_id, lane, None)
                .await
                .context("cannot publish a job")?;
            Ok::<JobId, anyhow::Error>(job_id)
        })
        .buffer_unordered(QUEUE_IN_FLIGHT)
        .inspect(|_| bar.inc())
        .try_collect()
        .await?;
    bar.finish(ids.len() as u64);
    Ok(ids)
}

/// Jobs still queued or running. Cheap while polling: it counts entries of the partial index
/// behind `conversation_busy`, which holds only active jobs.
///
/// # Errors
/// Database errors.
pub async fn active_jobs(pool: &Db) -> anyhow::Result<i64> {
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM jobs WHERE status IN ('queued', 'running')"#
    )
    .fetch_one(pool)
    .await?;
    Ok(count)
}

/// The jobs of some conversations, as recorded when they ended.
#[derive(Debug, Default)]
pub struct JobOutcomes {
    pub by_status: BTreeMap<String, u64>,
    /// Per succeeded job, milliseconds from `created_at` to `finished_at`.
    pub total_ms: Vec<f64>,
    /// Per succeeded job, milliseconds queued (`created_at` to `started_at`).
    pub queued_ms: Vec<f64>,
    /// Per succeeded job, milliseconds the provider call took.
    pub upstream_ms: Vec<f64>,
    /// From the first job recorded to the last job finished, in seconds, by the database's clock.
    pub span_secs: f64,
}

/// Reads the outcome of every job of these conversations.
///
/// # Errors
/// Database errors.
pub async fn job_outcomes(pool: &Db, conversations: &[Uuid]) -> anyhow::Result<JobOutcomes> {
    let rows = sqlx::query!(
        r#"SELECT status,
                  extract(epoch FROM created_at)::float8 AS "created_s!",
                  extract(epoch FROM finished_at)::float8 AS "finished_s?",
                  queued_ms, upstream_ms
             FROM jobs WHERE conversation_id = ANY($1)"#,
        conversations,
    )
    .fetch_all(pool)
    .await?;
    let mut outcomes = JobOutcomes::default();
    let mut first_created = f64::INFINITY;
    let mut last_finished = f64::NEG_INFINITY;
    for row in rows {
        *outcomes.by_status.entry(row.status.clone()).or_default() += 1;
        first_created = first_created.min(row.created_s);
        let Some(finished_s) = row.finished_s else {
            continue;
        };
        last_finished = last_finished.max(finished_s);
        if row.status == "succeeded" {
            outcomes
                .total_ms
                .push((finished_s - row.created_s) * 1000.0);
            outcomes.queued_ms.extend(row.queued_ms.map(f64::from));
            outcomes.upstream_ms.extend(row.upstream_ms.map(f64::from));
        }
    }
    outcomes.span_secs = (last_finished - first_created).max(0.0);
    Ok(outcomes)
}
