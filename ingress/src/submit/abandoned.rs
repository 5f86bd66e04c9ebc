//! A chat completion whose client goes away before the provider was called costs no call: the
//! OpenAI SDK gives up on a slow request and sends it again as a new one, and without this every
//! such retry would leave a job behind that still runs. (`cancel_abandoned_completions`, on by
//! default.)
//!
//! The guard lives in the request's future (or its response stream): when a client disconnects,
//! the server drops that future, and the guard, still armed, cancels the job if it is still
//! queued. A job a worker has started is left to finish: its reply is already being paid for,
//! and it stays readable through `GET /v1/jobs/{id}`.

use chatq_common::db::jobs;
use chatq_common::events::{self, JobEvent};
use chatq_common::ids::{JobId, TenantId};

use crate::state::AppState;

/// Cancels its job, if still queued, unless disarmed first.
pub struct AbandonGuard {
    /// Boxed: the state is large, and most guards are disarmed.
    armed: Option<Box<(AppState, TenantId, JobId)>>,
}

impl AbandonGuard {
    /// A guard for a job this request created (not a replayed one: that is another request's).
    pub fn new(state: &AppState, tenant: TenantId, job: JobId, replayed: bool) -> Self {
        let armed = (state.cancel_abandoned_completions && !replayed)
            .then(|| Box::new((state.clone(), tenant, job)));
        Self { armed }
    }

    /// The client has its answer (or the job ended): nothing to cancel.
    pub fn disarm(&mut self) {
        self.armed = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        let Some(armed) = self.armed.take() else {
            return;
        };
        let (state, tenant, job) = *armed;
        let tasks = state.tasks.clone();
        tasks.spawn(async move {
            match jobs::cancel_queued(&state.pool, tenant, job).await {
                Ok(Some(row)) => {
                    tracing::info!(job_id = %job, "the client went away before its completion started; job cancelled");
                    let event = JobEvent::ended_outside_attempt(row);
                    events::publish(&state.nats, &state.topology, job, &event).await;
                }
                // Started already: it finishes, and stays readable.
                Ok(None) => {}
                Err(err) => chatq_common::telemetry::log_error_chain(
                    "cannot cancel the job of a completion whose client went away",
                    &err,
                ),
            }
        });
    }
}
