//! Waiting for a job to finish, for `Prefer: wait=N` and `GET /v1/jobs/{id}?wait=N`.
//!
//! The waiter subscribes to the job's events before the job can finish (before it is published,
//! or before its status is read), so a job that finishes in between is not missed. A terminal event
//! only wakes the waiter; the answer is always read back from Postgres.

use std::time::Duration;

use axum::http::HeaderMap;
use chatq_common::events::JobEvent;
use chatq_common::ids::JobId;
use futures::StreamExt;

use crate::state::AppState;

/// A subscription to one job's events.
pub struct JobWaiter {
    subscriber: async_nats::Subscriber,
}

impl JobWaiter {
    /// Subscribes; `None` if NATS is unreachable (the caller then answers without waiting).
    pub async fn subscribe(state: &AppState, job: JobId) -> Option<Self> {
        match state
            .nats
            .subscribe(state.topology.events_subject(job))
            .await
        {
            Ok(subscriber) => Some(Self { subscriber }),
            Err(err) => {
                tracing::warn!(%job, error = %err, "cannot subscribe to job events; answering without waiting");
                None
            }
        }
    }

    /// Waits until the job emits a terminal event or `timeout` passes. Returns whether it ended.
    pub async fn wait_for_end(mut self, timeout: Duration) -> bool {
        let ended = async {
            while let Some(message) = self.subscriber.next().await {
                if let Ok(event) = serde_json::from_slice::<JobEvent>(&message.payload)
                    && event.event.is_terminal()
                {
                    return true;
                }
            }
            false
        };
        let ended = tokio::time::timeout(timeout, ended).await.unwrap_or(false);
        drop(self.subscriber.unsubscribe().await);
        ended
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
