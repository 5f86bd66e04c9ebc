//! Where a chat completion's time goes between the client and the provider: each answered
//! request beside its job's row, on the one clock of the machine.
//!
//! A job's row holds when its recording transaction began (`created_at`), when a worker claimed
//! it (`started_at`), the provider call as the worker timed it (`upstream_ms`) and when the
//! transaction that finished it began (`finished_at`). With the request's own sending and
//! answer, that cuts its latency into four stages that add up to it:
//!
//! - **to recording**: sent → `created_at`: HTTP, authentication, admission, and the wait for
//!   the group commit that records it;
//! - **queued**: `created_at` → `started_at`: the recording's commit, the publication, the pull
//!   and the claim;
//! - **in the worker, besides the call**: `started_at` → `finished_at` less the call: the prompt,
//!   the reply's events, and the wait for the group commit that finishes it;
//! - **to the answer**: `finished_at` → answered: the finish's commit, the terminal event through
//!   NATS to the ingress, and the HTTP answer.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use chatq_common::db::Db;
use serde::Serialize;
use uuid::Uuid;

use crate::figures::Percentiles;
use crate::openloop::OpenLoopOutcome;
use crate::traffic::job_ids;

/// Percentiles of each stage over the requests answered 200 whose job has ended.
#[derive(Debug, Clone, Serialize)]
pub struct Stages {
    pub to_recording_ms: Percentiles,
    pub queued_ms: Percentiles,
    pub worker_besides_call_ms: Percentiles,
    pub provider_call_ms: Percentiles,
    pub to_answer_ms: Percentiles,
}

/// A finished job's times, in milliseconds since the epoch (the call: its length).
#[derive(sqlx::FromRow)]
struct JobTimes {
    id: Uuid,
    created_ms: f64,
    started_ms: f64,
    finished_ms: f64,
    upstream_ms: i32,
}

impl Stages {
    /// The stages of `outcome`'s requests answered 200 (the job id in the captured header).
    ///
    /// # Errors
    /// Database errors; no request was answered with a finished job.
    pub async fn of(pool: &Db, outcome: &OpenLoopOutcome) -> anyhow::Result<Self> {
        let answered: Vec<_> = outcome
            .with_status(200)
            .filter(|sent| sent.error.is_none())
            .filter_map(|sent| Some((job_ids(sent.header.as_deref().into_iter()).pop()?, sent)))
            .collect();
        let ids: Vec<Uuid> = answered.iter().map(|(id, _)| *id).collect();
        let jobs: HashMap<Uuid, JobTimes> = sqlx::query_as::<_, JobTimes>(
            "SELECT id,
                    extract(epoch FROM created_at)::float8 * 1000 AS created_ms,
                    extract(epoch FROM started_at)::float8 * 1000 AS started_ms,
                    extract(epoch FROM finished_at)::float8 * 1000 AS finished_ms,
                    upstream_ms
               FROM jobs
              WHERE id = ANY($1) AND started_at IS NOT NULL AND finished_at IS NOT NULL
                AND upstream_ms IS NOT NULL",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await
        .context("cannot read the jobs' times")?
        .into_iter()
        .map(|job| (job.id, job))
        .collect();
        let start_ms = outcome
            .started_wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0;
        let mut stages: [Vec<f64>; 5] = Default::default();
        for (id, sent) in &answered {
            let Some(job) = jobs.get(id) else { continue };
            let call = f64::from(job.upstream_ms);
            let sent_ms = start_ms + sent.sent.as_secs_f64() * 1000.0;
            let answered_ms = start_ms + sent.answered.as_secs_f64() * 1000.0;
            stages[0].push(job.created_ms - sent_ms);
            stages[1].push(job.started_ms - job.created_ms);
            stages[2].push(job.finished_ms - job.started_ms - call);
            stages[3].push(call);
            stages[4].push(answered_ms - job.finished_ms);
        }
        let [to_recording, queued, besides, call, to_answer] = stages;
        Ok(Self {
            to_recording_ms: Percentiles::of_millis(&to_recording)?,
            queued_ms: Percentiles::of_millis(&queued)?,
            worker_besides_call_ms: Percentiles::of_millis(&besides)?,
            provider_call_ms: Percentiles::of_millis(&call)?,
            to_answer_ms: Percentiles::of_millis(&to_answer)?,
        })
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "  where each request's time went, ms:");
        for (stage, figures) in [
            ("sent → its recording began", &self.to_recording_ms),
            ("recording began → claimed", &self.queued_ms),
            (
                "in the worker, besides the call",
                &self.worker_besides_call_ms,
            ),
            ("the provider call", &self.provider_call_ms),
            ("finish began → answered", &self.to_answer_ms),
        ] {
            let _ = writeln!(out, "    {stage:<34} {figures}");
        }
    }
}
