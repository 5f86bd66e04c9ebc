//! Publishing a new batch's lines to the batch lane, after the request that created it is
//! answered.
//!
//! The lines are recorded `queued` before the batch is answered, so publishing them is only a
//! matter of time: done here at once, a page at a time with many publishes in flight (each still
//! with `Nats-Msg-Id` and its acknowledgement awaited); anything this leaves unpublished (the
//! batch lane filled up, NATS went away, the ingress began to stop) is published by the
//! reconciler, as for any other job recorded but not acknowledged.

use chatq_common::db::batches::lines;
use chatq_common::db::jobs;
use chatq_common::ids::{BatchId, JobId};
use chatq_common::job::Lane;
use chatq_common::queue::{PublishJobError, publish_job};
use futures::StreamExt as _;

use crate::state::AppState;

/// Jobs read (and marked published) per page.
const PAGE: i64 = 1000;

/// Publishes in flight at once: enough to keep JetStream busy, few enough to leave it room for
/// interactive jobs published meanwhile.
const IN_FLIGHT: usize = 128;

/// Starts publishing the batch's lines; shutdown waits for it.
pub fn spawn(state: &AppState, batch: BatchId) {
    let task_state = state.clone();
    state.tasks.spawn(async move {
        if let Err(err) = publish(&task_state, batch).await {
            tracing::warn!(%batch, error = %err, "could not publish a batch's lines; the reconciler will queue them");
        }
    });
}

#[tracing::instrument(level = "debug", skip_all, fields(%batch))]
async fn publish(state: &AppState, batch: BatchId) -> Result<(), sqlx::Error> {
    let mut after: Option<JobId> = None;
    loop {
        // A stopping ingress does not hold up its shutdown for a large batch: the reconciler
        // publishes what is left.
        if state.streams_stop.is_cancelled() {
            return Ok(());
        }
        let page = lines::unpublished(&state.pool, batch, after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(*last);
        let outcomes: Vec<(JobId, Result<bool, PublishJobError>)> = futures::stream::iter(page)
            .map(|id| async move {
                let outcome =
                    publish_job(&state.jetstream, &state.topology, id, Lane::Batch, None).await;
                (id, outcome)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut stored = Vec::with_capacity(outcomes.len());
        let mut stop = false;
        for (id, outcome) in outcomes {
            match outcome {
                Ok(_) => stored.push(id.as_uuid()),
                // The batch lane is full (it has a queue of its own, so interactive requests
                // are still admitted): the rest waits for the reconciler, as the lane drains.
                Err(PublishJobError::QueueFull) => stop = true,
                Err(PublishJobError::Unavailable(err)) => {
                    tracing::warn!(job_id = %id, error = %err, "publish failed; the reconciler will queue the line");
                    stop = true;
                }
            }
        }
        jobs::mark_published(&state.pool, &stored).await?;
        if stop {
            return Ok(());
        }
    }
}
