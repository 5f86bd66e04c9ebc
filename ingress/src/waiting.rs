//! Waiting for a job to end: the one place every wait goes through (`Prefer: wait=N`,
//! `GET /v1/jobs/{id}?wait=N`, a non-streaming chat completion, a cancel of a running job).
//!
//! A wait follows the job's event hub, started before the job can end (before it is published, or
//! before its status is read), so an end in between is not missed. The hub ends its log from
//! Postgres when the terminal event is lost, so a wait ends within seconds of its job, by event or
//! by reading Postgres. Without NATS, the wait reads Postgres itself.

use std::time::Duration;

use axum::http::HeaderMap;
use chatq_common::db::Db;
use chatq_common::db::jobs;
use chatq_common::events::JobView;
use chatq_common::ids::JobId;

use crate::hub::HubCursor;
use crate::state::AppState;

/// How often a wait without NATS reads the job from Postgres.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// A wait for one job's end, begun before the job could end.
pub struct JobWait {
    job: JobId,
    pool: Db,
    /// `None` when NATS cannot be reached: the wait polls Postgres instead.
    cursor: Option<HubCursor>,
}

impl JobWait {
    /// Begins waiting. The caller has already checked that the job is the tenant's.
    pub async fn begin(state: &AppState, job: JobId) -> Self {
        Self::following(state, job, state.hubs.follow(job).await)
    }

    /// Begins waiting for a job this request has just recorded (`job`, as
    /// [`JobView::queued`] describes it) and not yet published (see
    /// [`crate::hub::EventHubs::follow_recorded`]).
    pub async fn begin_recorded(state: &AppState, job: JobView) -> Self {
        let id = job.id;
        Self::following(state, id, state.hubs.follow_recorded(job).await)
    }

    fn following(
        state: &AppState,
        job: JobId,
        followed: Result<HubCursor, crate::hub::HubError>,
    ) -> Self {
        let cursor = match followed {
            Ok(cursor) => Some(cursor),
            Err(err) => {
                tracing::warn!(%job, error = %err, "cannot follow a job's events; polling Postgres instead");
                None
            }
        };
        Self {
            job,
            pool: state.pool.clone(),
            cursor,
        }
    }

    /// The job as it ended, or `None` if it has not ended within `timeout`.
    pub async fn until_end(self, timeout: Duration) -> Option<JobView> {
        let Self { job, pool, cursor } = self;
        let ended = async move {
            match cursor {
                Some(mut cursor) => {
                    while let Some(event) = cursor.next().await {
                        if let Some(job) = event.body.ended_job() {
                            return Some(job.clone());
                        }
                    }
                    None
                }
                None => loop {
                    if let Ok(Some(row)) = jobs::get_any(&pool, job).await
                        && row.status().is_terminal()
                    {
                        return Some(JobView::from(row));
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                },
            }
        };
        tokio::time::timeout(timeout, ended).await.ok().flatten()
    }
}

/// The `wait=N` preference of a `Prefer` header (RFC 7240), in seconds.
pub fn preferred_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|preference| {
            let (name, value) = preference.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').parse().ok())?
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn wait_is_read_from_prefer_among_other_preferences() {
        let mut headers = HeaderMap::new();
        headers.insert("prefer", HeaderValue::from_static("respond-async, wait=10"));
        assert_eq!(preferred_wait(&headers), Some(10));
        headers.insert("prefer", HeaderValue::from_static("return=minimal"));
        assert_eq!(preferred_wait(&headers), None);
        headers.insert("prefer", HeaderValue::from_static("Wait=\"3\""));
        assert_eq!(preferred_wait(&headers), Some(3));
    }
}
