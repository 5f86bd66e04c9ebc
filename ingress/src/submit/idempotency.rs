//! `Idempotency-Key`: a client that retries a request with the same key gets the job the key
//! first created, not a second job. A key stands for one request: reusing it for another is
//! refused with 409.

use axum::http::HeaderMap;
use chatq_common::db::jobs::{self, Idempotency, JobRow};
use chatq_common::ids::TenantId;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::validate::check_idempotency_key;

/// The `Idempotency-Key` header of a request, validated.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Reads the header; `None` when the request has none.
    ///
    /// # Errors
    /// 400 for a key that is not 1 to 255 printable ASCII characters.
    pub fn from_headers(headers: &HeaderMap) -> ApiResult<Option<Self>> {
        let Some(value) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let key = value.to_str().map_err(|_| {
            ApiError::invalid(
                "Invalid 'Idempotency-Key' header: use printable ASCII.",
                "Idempotency-Key",
            )
        })?;
        check_idempotency_key(key)?;
        Ok(Some(Self(key.to_owned())))
    }

    /// What the key stands for: the route's `scope` (e.g. the conversation) and the body, so
    /// reusing the key for another request is refused instead of answered with the first one.
    pub fn bind(self, scope: &str, body: &impl Serialize) -> Idempotency {
        let mut hash = Sha256::new();
        hash.update(scope.as_bytes());
        hash.update(serde_json::to_vec(body).unwrap_or_default());
        Idempotency {
            key: self.0,
            request_hash: hash.finalize().to_vec(),
        }
    }
}

/// The job a key first created, for a retry of the same request.
///
/// # Errors
/// 409 `idempotency_key_reused` when the key was used for another request, or for a job that no
/// longer exists (deleted with its conversation).
pub async fn first_job(
    state: &AppState,
    tenant: TenantId,
    idempotency: &Idempotency,
) -> ApiResult<JobRow> {
    let Some(job) = jobs::find_by_idempotency_key(&state.pool, tenant, &idempotency.key).await?
    else {
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "This Idempotency-Key was used for a conversation that has since been deleted; use a new key.".into(),
        });
    };
    if job.request_hash.as_deref() != Some(idempotency.request_hash.as_slice()) {
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "This Idempotency-Key was already used for a different request; use a new key for a new request.".into(),
        });
    }
    Ok(job)
}
