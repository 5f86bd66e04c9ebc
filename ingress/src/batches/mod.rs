//! The OpenAI Batch API: a `batch` file of chat completion requests, each line run as a chatq job
//! on the batch lane, so every line has a job's guarantees (recorded before it is answered,
//! published with its id, claimed before the provider is called, retried under the job retry
//! policy, ended exactly once) and runs under the fleet's provider limits, after interactive work.
//!
//! - [`create`]: the request checked, the batch recorded `validating` and answered.
//! - [`validate`]: in the background, the input file read and every line recorded in one
//!   transaction, ending the batch `in_progress` (or `failed`).
//! - `line`: one line checked, its body by chat completions' own validation.
//! - [`publish`]: the lines published after the batch is answered.
//! - [`output`]: the output and error files, rendered from the jobs.
//!
//! A batch's counts and status are read from its jobs (`chatq_common::db::batches`), so they are
//! live while it runs and always add up.

pub mod create;
mod line;
pub mod output;
pub mod publish;
pub mod validate;

use chatq_common::db::batches::{self, BatchRow, LineCounts};
use chatq_common::ids::{BatchId, FileId, TenantId};
use serde::Serialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A batch as the API shows it (OpenAI's batch object).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchView {
    pub id: BatchId,
    pub object: &'static str,
    pub endpoint: String,
    pub model: Option<String>,
    pub errors: Option<Value>,
    pub input_file_id: FileId,
    pub completion_window: String,
    pub status: String,
    pub output_file_id: Option<FileId>,
    pub error_file_id: Option<FileId>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<Value>,
    pub usage: BatchUsage,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequestCounts {
    pub total: i64,
    /// Lines answered.
    pub completed: i64,
    /// Lines that ended without an answer: refused as invalid, failed for good, expired or
    /// cancelled. Once the batch has ended, `completed + failed = total`.
    pub failed: i64,
}

/// Tokens the batch's answered lines used, in the shape OpenAI reports a batch's usage.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchUsage {
    pub input_tokens: i64,
    pub input_tokens_details: Value,
    pub output_tokens: i64,
    pub output_tokens_details: Value,
    pub total_tokens: i64,
}

fn unix(at: Option<time::OffsetDateTime>) -> Option<i64> {
    at.map(time::OffsetDateTime::unix_timestamp)
}

impl BatchView {
    fn new(row: BatchRow, counts: LineCounts) -> Self {
        let total = if row.status == "failed" {
            0
        } else {
            i64::from(row.total)
        };
        BatchView {
            id: row.id,
            object: "batch",
            endpoint: row.endpoint,
            model: row.model,
            errors: row.errors,
            input_file_id: row.input_file_id,
            completion_window: row.completion_window,
            status: row.status,
            output_file_id: row.output_file_id,
            error_file_id: row.error_file_id,
            created_at: row.created_at.unix_timestamp(),
            in_progress_at: unix(row.in_progress_at),
            expires_at: Some(row.expires_at.unix_timestamp()),
            finalizing_at: unix(row.finalizing_at),
            completed_at: unix(row.completed_at),
            failed_at: unix(row.failed_at),
            expired_at: unix(row.expired_at),
            cancelling_at: unix(row.cancelling_at),
            cancelled_at: unix(row.cancelled_at),
            request_counts: RequestCounts {
                total,
                completed: counts.succeeded,
                failed: counts.unanswered,
            },
            metadata: row.metadata,
            usage: BatchUsage {
                input_tokens: counts.prompt_tokens,
                input_tokens_details: serde_json::json!({ "cached_tokens": counts.cached_tokens }),
                output_tokens: counts.completion_tokens,
                output_tokens_details: serde_json::json!({
                    "reasoning_tokens": counts.reasoning_tokens
                }),
                total_tokens: counts.prompt_tokens + counts.completion_tokens,
            },
        }
    }
}

/// Whether the batch may still change (its lines may still run).
fn is_active(row: &BatchRow) -> bool {
    matches!(row.status.as_str(), "in_progress" | "cancelling")
}

/// A batch row as the API shows it, moved on first as far as its lines allow.
///
/// # Errors
/// Database errors.
pub async fn shown(state: &AppState, tenant: TenantId, row: BatchRow) -> ApiResult<BatchView> {
    let row = if is_active(&row) {
        batches::settle(&state.pool, tenant, row.id)
            .await?
            .unwrap_or(row)
    } else {
        row
    };
    let counts = batches::counts(&state.pool, row.id).await?;
    Ok(BatchView::new(row, counts))
}

/// One of the tenant's batches.
///
/// # Errors
/// 404 when the tenant has no such batch.
pub async fn view(state: &AppState, tenant: TenantId, id: BatchId) -> ApiResult<BatchView> {
    let row = batches::get(&state.pool, tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("batch", id))?;
    shown(state, tenant, row).await
}

/// Cancels one of the tenant's batches: no line starts after this; lines already answered are
/// kept; the batch ends `cancelled` once its running lines have ended.
///
/// # Errors
/// 404 when the tenant has no such batch; 409 when it has already ended.
pub async fn cancel(state: &AppState, tenant: TenantId, id: BatchId) -> ApiResult<BatchView> {
    let row = batches::cancel(&state.pool, tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("batch", id))?;
    if !matches!(row.status.as_str(), "cancelling" | "cancelled") {
        return Err(ApiError::Conflict {
            code: "batch_not_cancellable",
            message: format!(
                "The batch '{id}' has ended ({}) and cannot be cancelled.",
                row.status
            ),
        });
    }
    shown(state, tenant, row).await
}
