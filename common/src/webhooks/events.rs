//! The events a webhook endpoint can ask for, and the body each delivery carries.
//!
//! Which event a job, response or batch produces is decided where its result is committed: the
//! `webhook_enqueue` trigger of the `webhooks` migration writes one outbox row per endpoint that
//! wants it, in the same transaction. This module names the types, reads the patterns an endpoint
//! gives, and renders the body in OpenAI's webhook shape:
//!
//! ```json
//! {"id": "evt_…", "object": "event", "type": "response.completed", "created_at": 1750287018,
//!  "data": {"id": "resp_…"}}
//! ```

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::{BatchId, EventId, JobId, ResponseId};

/// Every event type, by family. A job that is not a response's nor a batch's line reports
/// `job.*`; a response's job reports `response.*` (as OpenAI's do); a batch reports `batch.*`.
pub const EVENT_TYPES: &[&str] = &[
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "job.expired",
    "response.completed",
    "response.failed",
    "response.cancelled",
    "response.incomplete",
    "batch.completed",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
];

/// The families, each of which an endpoint may ask for whole (`job.*`).
const FAMILIES: &[&str] = &["job", "response", "batch"];

/// Whether `pattern` names an event type or a family's wildcard (`batch.*`).
pub fn is_known_pattern(pattern: &str) -> bool {
    EVENT_TYPES.contains(&pattern)
        || pattern
            .strip_suffix(".*")
            .is_some_and(|family| FAMILIES.contains(&family))
}

/// Whether an endpoint asking for `patterns` wants `event` (the rule the trigger applies, for
/// code and tests that need it outside Postgres).
pub fn wants(patterns: &[String], event: &str) -> bool {
    let family = event.split('.').next().unwrap_or(event);
    patterns
        .iter()
        .any(|p| p == event || p.strip_suffix(".*") == Some(family))
}

/// The id of the object an event is about, as clients know it (`job_…`, `resp_…`, `batch_…`).
pub fn object_id(event: &str, object: Uuid) -> String {
    match event.split('.').next() {
        Some("response") => ResponseId::from_uuid(object).to_string(),
        Some("batch") => BatchId::from_uuid(object).to_string(),
        _ => JobId::from_uuid(object).to_string(),
    }
}

/// The body of a delivery: the same bytes on every attempt.
pub fn payload(id: EventId, event: &str, object: Uuid, created_at: OffsetDateTime) -> Value {
    json!({
        "id": id.to_string(),
        "object": "event",
        "type": event,
        "created_at": created_at.unix_timestamp(),
        "data": { "id": object_id(event, object) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_types_or_family_wildcards() {
        assert!(is_known_pattern("job.succeeded"));
        assert!(is_known_pattern("batch.*"));
        assert!(!is_known_pattern("job.started"));
        assert!(!is_known_pattern("*"));
        assert!(!is_known_pattern("fine_tuning.*"));
    }

    #[test]
    fn a_wildcard_wants_its_family_only() {
        let patterns = vec!["job.*".to_owned(), "batch.failed".to_owned()];
        assert!(wants(&patterns, "job.expired"));
        assert!(wants(&patterns, "batch.failed"));
        assert!(!wants(&patterns, "batch.completed"));
        assert!(!wants(&patterns, "response.completed"));
    }

    #[test]
    fn a_response_event_names_the_response() {
        let object = Uuid::now_v7();
        let body = payload(
            EventId::new(),
            "response.completed",
            object,
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(
            body["data"]["id"],
            ResponseId::from_uuid(object).to_string()
        );
        assert_eq!(body["object"], "event");
        assert_eq!(body["created_at"], 0);
        assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    }
}
