//! One look at Postgres for every job this process follows, instead of one per job.
//!
//! A hub's log normally ends with the terminal event its job's worker publishes. When that event
//! is lost (NATS down, the replay window over) or the job is deleted, the hub learns it from
//! Postgres. Asked by each hub on its own timer, that cost one statement per followed job every
//! [`RECHECK_EVERY`]: 2,000 statements a second for 10,000 idle SSE streams. Here one task asks
//! for all of them in a few statements, and nudges only the pumps whose job has ended or gone;
//! each of those then reads its job itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatq_common::db::Db;
use chatq_common::db::jobs;
use chatq_common::ids::JobId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the jobs followed are checked in Postgres.
const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// Most job ids in one statement.
const IDS_PER_STATEMENT: usize = 5_000;

/// The jobs this process follows, each with the pump to nudge when it has ended.
#[derive(Default)]
pub(super) struct Rechecks {
    followed: Mutex<HashMap<JobId, Arc<Notify>>>,
}

/// A job checked for as long as this is held.
pub(super) struct Watched {
    job: JobId,
    nudge: Arc<Notify>,
    rechecks: Arc<Rechecks>,
}

impl Watched {
    /// Returns once the job has been seen ended or gone in Postgres (at once if it was seen so
    /// since the last call).
    pub(super) async fn nudged(&self) {
        self.nudge.notified().await;
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Only its own entry: a hub for the same job made after this one's last follower left
        // may have registered before this pump stopped.
        let mut followed = self.rechecks.lock();
        if followed
            .get(&self.job)
            .is_some_and(|nudge| Arc::ptr_eq(nudge, &self.nudge))
        {
            followed.remove(&self.job);
        }
    }
}

impl Rechecks {
    /// Checks `job` until the returned guard is dropped. One pump per job per process, so one
    /// entry per job.
    pub(super) fn watch(self: &Arc<Self>, job: JobId) -> Watched {
        let nudge = Arc::new(Notify::new());
        // Replaces the entry of a stopping pump of the same job, if any (see `Drop`).
        self.lock().insert(job, nudge.clone());
        Watched {
            job,
            nudge,
            rechecks: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Notify>>> {
        self.followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every [`RECHECK_EVERY`], nudges the pumps of jobs that ended or are gone, until `stop`.
    /// Postgres unreachable: nobody is nudged, and the next round asks again.
    pub(super) async fn run_until_stopped(self: Arc<Self>, pool: Db, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(RECHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let followed: Vec<uuid::Uuid> = self.lock().keys().map(JobId::as_uuid).collect();
            for ids in followed.chunks(IDS_PER_STATEMENT) {
                match jobs::ended_or_gone(&pool, ids).await {
                    Ok(ended) => self.nudge(&ended),
                    Err(err) => {
                        tracing::debug!(error = %err, "cannot check followed jobs; trying again later");
                        break;
                    }
                }
            }
        }
    }

    fn nudge(&self, ended: &[JobId]) {
        let followed = self.lock();
        for job in ended {
            if let Some(nudge) = followed.get(job) {
                // Kept if the pump is not waiting right now: it returns at its next wait.
                nudge.notify_one();
            }
        }
    }
}
