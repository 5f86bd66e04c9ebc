//! The retention sweep: every worker, every `CHATQ_RETENTION_SWEEP_INTERVAL_SECS`, deletes what
//! has been kept long enough (finished jobs, dead letters, idle conversations and responses,
//! ended batches, expired files, ended webhook deliveries; see
//! [`chatq_common::db::retention`] for what each means and why an unfinished job is never
//! deleted).
//!
//! It runs beside the jobs and never in their way: each statement deletes one bounded batch
//! (`CHATQ_RETENTION_SWEEP_BATCH`) in its own short transaction and skips rows others hold, and
//! the sweep yields between batches. Several workers sweeping at once share the work (they skip
//! each other's rows). An error ends the sweep early; the next one starts over.

use std::time::Duration;

use chatq_common::db::Db;
use chatq_common::db::retention;
use chatq_common::settings::RetentionSettings;
use tokio_util::sync::CancellationToken;

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub finished_jobs: u64,
    pub dead_letters: u64,
    pub conversations: u64,
    /// Lines (jobs) of batches that ended long enough ago.
    pub batch_lines: u64,
    /// Batches that ended long enough ago, with their output and error files.
    pub batches: u64,
    /// Files past their `expires_at`, and uploads kept long enough.
    pub files: u64,
    /// Responses (Responses API), kept as long as conversations.
    pub responses: u64,
    /// Webhook deliveries that ended long enough ago.
    pub webhook_deliveries: u64,
}

/// Deletes expired rows, in batches.
#[derive(Clone)]
pub struct Sweeper {
    pool: Db,
    settings: RetentionSettings,
}

impl Sweeper {
    pub fn new(pool: Db, settings: RetentionSettings) -> Self {
        Self { pool, settings }
    }

    /// Sweeps every interval until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.settings.sweep_interval_secs.max(1));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let sweep = tokio::select! {
                () = shutdown.cancelled() => return,
                sweep = self.sweep() => sweep,
            };
            match sweep {
                Ok(report) if report == SweepReport::default() => {}
                Ok(report) => tracing::info!(
                    finished_jobs = report.finished_jobs,
                    dead_letters = report.dead_letters,
                    conversations = report.conversations,
                    batch_lines = report.batch_lines,
                    batches = report.batches,
                    files = report.files,
                    responses = report.responses,
                    webhook_deliveries = report.webhook_deliveries,
                    "retention sweep deleted expired rows"
                ),
                Err(err) => {
                    chatq_common::telemetry::log_error_chain("retention sweep failed", &err);
                }
            }
        }
    }

    /// One sweep: each kind of row, batch after batch, until a batch comes back short.
    ///
    /// # Errors
    /// Postgres is unavailable.
    pub async fn sweep(&self) -> Result<SweepReport, sqlx::Error> {
        let s = &self.settings;
        let batch = i64::from(s.sweep_batch.max(1));
        let mut report = SweepReport::default();
        if let Some(secs) = s.finished_jobs_secs {
            report.finished_jobs = self
                .in_batches(batch, |pool| async move {
                    retention::delete_finished_jobs(&pool, secs as f64, batch).await
                })
                .await?;
        }
        if let Some(secs) = s.dead_letters_secs {
            report.dead_letters = self
                .in_batches(batch, |pool| async move {
                    retention::delete_dead_letters(&pool, secs as f64, batch).await
                })
                .await?;
        }
        if let Some(secs) = s.idle_conversations_secs {
            report.conversations = self
                .in_batches(batch, |pool| async move {
                    retention::delete_idle_conversations(&pool, secs as f64, batch).await
                })
                .await?;
            report.responses = self
                .in_batches(batch, |pool| async move {
                    retention::delete_idle_responses(&pool, secs as f64, batch).await
                })
                .await?;
        }
        if let Some(secs) = s.batches_secs {
            report.batch_lines = self
                .in_batches(batch, |pool| async move {
                    retention::delete_ended_batch_lines(&pool, secs as f64, batch).await
                })
                .await?;
            report.batches = self
                .in_batches(batch, |pool| async move {
                    retention::delete_ended_batches(&pool, secs as f64, batch).await
                })
                .await?;
        }
        if let Some(secs) = s.webhook_deliveries_secs {
            report.webhook_deliveries = self
                .in_batches(batch, |pool| async move {
                    retention::delete_finished_deliveries(&pool, secs as f64, batch).await
                })
                .await?;
        }
        let uploads = s.uploads_secs.map(|secs| secs as f64);
        report.files = self
            .in_batches(batch, |pool| async move {
                retention::delete_expired_files(&pool, uploads, batch).await
            })
            .await?;
        Ok(report)
    }

    /// Runs `delete` until it deletes fewer than `batch` rows; returns the total.
    async fn in_batches<F, Fut>(&self, batch: i64, delete: F) -> Result<u64, sqlx::Error>
    where
        F: Fn(Db) -> Fut,
        Fut: Future<Output = Result<u64, sqlx::Error>>,
    {
        let full = u64::try_from(batch).unwrap_or(u64::MAX);
        let mut total = 0;
        loop {
            let deleted = delete(self.pool.clone()).await?;
            total += deleted;
            if deleted < full {
                return Ok(total);
            }
            // Let the jobs this worker runs have the runtime between batches.
            tokio::task::yield_now().await;
        }
    }
}
