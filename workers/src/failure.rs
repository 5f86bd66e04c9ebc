//! What follows a failed attempt: how long to wait before the next one, what the client is told,
//! and the dead-letter copy of a job that failed for good.

use std::time::Duration;

use chatq_common::db::jobs::ClaimedJob;
use chatq_common::job::Lane;
use chatq_common::queue::message_id;
use rand::Rng;
use serde_json::json;

use crate::process::JobContext;
use crate::provider::ProviderError;

/// How long to wait before trying again when Postgres itself is unavailable: two seconds, then
/// doubling with each delivery of the same message up to two minutes, so that a long outage uses
/// up a message's deliveries (`max_deliver`) only after about ten minutes.
pub fn database_retry(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 6)).unwrap_or(6);
    Duration::from_secs(2u64 << doublings).min(Duration::from_secs(120))
}

/// Exponential backoff with jitter, starting at one second and capped at a minute, unless the
/// provider said how long to wait (honoured up to five minutes).
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(Duration::from_secs(300));
    }
    let base = Duration::from_secs(1).saturating_mul(1 << attempt.saturating_sub(1).min(6));
    let base = base.min(Duration::from_secs(60));
    let jitter = rand::rng().random_range(0.8..1.2);
    base.mul_f64(jitter)
}

/// The job error a client sees: a stable sentence per kind of failure, with the status the
/// provider answered where it has one. Never the provider's own words (its error bodies may
/// carry its internals, or echo chatq's credentials), nor transport details (the provider's URL);
/// operators find those in the worker's log, redacted.
pub fn public_message(error: &ProviderError) -> String {
    match error {
        ProviderError::RateLimited { .. } => {
            "the provider is rate limiting requests (HTTP 429)".into()
        }
        ProviderError::Server { status, .. } => format!("the provider failed with HTTP {status}"),
        ProviderError::Rejected { status: 401 | 403, .. } => {
            "the provider refused chatq's credentials; the operator should check CHATQ_PROVIDER_API_KEY".into()
        }
        ProviderError::Rejected { status, .. } => format!(
            "the provider rejected the request with HTTP {status}; check the model and the request's parameters"
        ),
        ProviderError::Timeout(_) => "the provider did not answer in time".into(),
        ProviderError::Connect(_) => "cannot reach the provider".into(),
        ProviderError::Malformed(_) => "the provider sent a malformed reply".into(),
        ProviderError::Truncated | ProviderError::TooLarge { .. } => error.to_string(),
    }
}

/// Keeps a copy of a job that failed for good in the dead-letter stream, for inspection. The
/// failure is already recorded in Postgres, so a failed publish is logged, not retried. The copy
/// is named like the job's queue copy, so a job failing again after a retry is kept again.
pub async fn dead_letter(
    ctx: &JobContext,
    job: &ClaimedJob,
    lane: Lane,
    error_type: &str,
    message: &str,
) {
    let job_id = job.id;
    metrics::counter!(chatq_common::metrics::DEAD_LETTERS, "lane" => lane.as_str()).increment(1);
    let payload = json!({
        "job_id": job_id,
        "lane": lane,
        "error": { "type": error_type, "message": message },
        "attempts": job.attempts,
        "failed_at": time::OffsetDateTime::now_utc().unix_timestamp(),
        "worker": ctx.worker_id,
    });
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", message_id(job_id, job.publication).as_str());
    let published = ctx
        .jetstream
        .publish_with_headers(
            ctx.topology.dead_letter_subject(lane),
            headers,
            payload.to_string().into(),
        )
        .await;
    let acked = match published {
        Ok(ack) => ack.await.map(|_| ()).map_err(|err| err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    if let Err(err) = acked {
        tracing::warn!(%job_id, error = %err, "could not copy a failed job to the dead-letter stream");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_and_honour_retry_after() {
        let first = retry_delay(1, None);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let fourth = retry_delay(4, None);
        assert!(fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600));
        assert!(retry_delay(30, None) <= Duration::from_secs(72));
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(9999))),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn database_outages_back_off_per_delivery() {
        assert_eq!(database_retry(1), Duration::from_secs(2));
        assert_eq!(database_retry(3), Duration::from_secs(8));
        assert_eq!(database_retry(40), Duration::from_secs(120));
        // The default max_deliver (13) is reached only after about ten minutes.
        let total: Duration = (1..13).map(database_retry).sum();
        assert!(total >= Duration::from_secs(600), "{total:?}");
    }

    #[test]
    fn credentials_problems_do_not_echo_the_provider() {
        let error = ProviderError::Rejected {
            status: 401,
            message: "Incorrect API key provided: sk-abc".into(),
        };
        assert!(!public_message(&error).contains("sk-abc"));
    }

    #[test]
    fn clients_see_no_provider_text_or_transport_detail() {
        let secret = "at http://admin:hunter2@10.0.0.7:8000/v1: internal trace";
        for error in [
            ProviderError::Server {
                status: 502,
                message: secret.into(),
                retry_after: None,
            },
            ProviderError::Rejected {
                status: 400,
                message: secret.into(),
            },
            ProviderError::Timeout(secret.into()),
            ProviderError::Connect(secret.into()),
            ProviderError::Malformed(secret.into()),
        ] {
            let shown = public_message(&error);
            assert!(
                !shown.contains("hunter2") && !shown.contains("10.0.0.7"),
                "{shown}"
            );
            assert!(shown.starts_with("the provider") || shown.starts_with("cannot reach"));
        }
    }
}
