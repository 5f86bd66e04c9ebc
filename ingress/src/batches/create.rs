//! `POST /v1/batches`: the request checked and the batch recorded `validating`, answered at once;
//! its input is validated in the background ([`super::validate`]).

use chatq_common::db::batches::{self, BatchRow, NewBatch};
use chatq_common::db::files::{self, FileContents};
use chatq_common::ids::{BatchId, FileId, TenantId};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::line::CHAT_COMPLETIONS;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `POST /v1/batches`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatchRequest {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    /// Up to 16 string values, keys up to 64 characters, values up to 512.
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub metadata: Option<Map<String, Value>>,
    pub output_expires_after: Option<OutputExpiresAfter>,
}

/// How long the output and error files are kept.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputExpiresAfter {
    pub anchor: String,
    pub seconds: i64,
}

/// Creates a batch from one of the tenant's `batch` files, `validating`; [`super::validate`]
/// takes it on from there.
///
/// # Errors
/// 400 for a bad request (endpoint, window, metadata, a file of another purpose), 404 for a file
/// the tenant does not have.
pub async fn create(
    state: &AppState,
    tenant: TenantId,
    request: CreateBatchRequest,
) -> ApiResult<BatchRow> {
    let new = checked(state, tenant, request)?;
    let file = files::get(&state.pool, tenant, new.input_file_id)
        .await?
        .ok_or_else(|| ApiError::not_found("file", new.input_file_id))?;
    if file.contents != FileContents::Upload || file.purpose != "batch" {
        return Err(ApiError::invalid_with_code(
            format!(
                "The file '{}' has purpose '{}'; a batch's input file must be uploaded with purpose 'batch'.",
                file.id, file.purpose
            ),
            "input_file_id",
            "invalid_value",
        ));
    }
    let batch = batches::insert_validating(&state.pool, &new).await?;
    super::validate::spawn(state, new.id);
    Ok(batch)
}

/// The request checked into the batch to create.
fn checked(state: &AppState, tenant: TenantId, request: CreateBatchRequest) -> ApiResult<NewBatch> {
    let input_file_id: FileId = request.input_file_id.parse().map_err(|err| {
        ApiError::invalid_with_code(
            format!("Invalid 'input_file_id': {err}."),
            "input_file_id",
            "invalid_id",
        )
    })?;
    if request.endpoint != CHAT_COMPLETIONS {
        return Err(ApiError::invalid_with_code(
            format!(
                "Invalid 'endpoint': '{}'. chatq runs batches of '{CHAT_COMPLETIONS}' only.",
                request.endpoint
            ),
            "endpoint",
            "invalid_value",
        ));
    }
    let window_secs = parse_window(&request.completion_window)
        .filter(|secs| {
            (state.limits.batch_min_window_secs..=state.limits.batch_max_window_secs).contains(secs)
        })
        .ok_or_else(|| {
            ApiError::invalid_with_code(
                format!(
                    "Invalid 'completion_window': '{}'. Give a duration such as '24h' or '7d', \
                     from {} to {} seconds.",
                    request.completion_window,
                    state.limits.batch_min_window_secs,
                    state.limits.batch_max_window_secs
                ),
                "completion_window",
                "invalid_value",
            )
        })?;
    if let Some(metadata) = &request.metadata {
        crate::validate::check_metadata(metadata)?;
    }
    let output_expires_secs = match request.output_expires_after {
        None => None,
        Some(after)
            if after.anchor == "created_at" && (3600..=2_592_000).contains(&after.seconds) =>
        {
            Some(after.seconds)
        }
        Some(_) => {
            return Err(ApiError::invalid_with_code(
                "Invalid 'output_expires_after': 'anchor' must be 'created_at' and 'seconds' \
                 between 3600 and 2592000.",
                "output_expires_after",
                "invalid_value",
            ));
        }
    };
    Ok(NewBatch {
        id: BatchId::new(),
        tenant,
        input_file_id,
        endpoint: request.endpoint,
        completion_window: request.completion_window,
        window_secs: window_secs as f64,
        metadata: request.metadata.map(Value::Object),
        output_expires_secs,
    })
}

/// `30m`, `1h`, `24h`, `7d` (or `90s`) in seconds.
pub fn parse_window(text: &str) -> Option<u64> {
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let count: u64 = text[..text.len() - 1].parse().ok()?;
    count.checked_mul(unit)
}
