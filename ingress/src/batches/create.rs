//! `POST /v1/batches`: the request checked, the input file read line by line and every line
//! recorded, in one transaction, then the lines published (see [`super::publish`]).
//!
//! Memory stays bounded by the page, not the file: chunks are read one at a time, lines are
//! gathered a thousand at a time and written with one statement each. Only the custom ids seen so
//! far are kept whole (to refuse a repeated one), and `max_file_lines` bounds them.
//!
//! A file with a line that is not a batch request (not JSON, no custom id, a repeated one, the
//! wrong method or URL, no body) fails validation as a whole, as OpenAI's does: the batch is
//! recorded `failed` with every such line in `errors`, and none of its lines is run.

use std::collections::HashSet;

use chatq_common::db::batches::lines::LineRows;
use chatq_common::db::batches::{self, BatchRow, NewBatch};
use chatq_common::db::files::{self, FileContents};
use chatq_common::ids::{BatchId, FileId, JobId, TenantId};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::PgConnection;

use super::line::{self, CHAT_COMPLETIONS, CheckedLine, LineError};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Lines written per statement.
const PAGE_LINES: usize = 1000;

/// Most line errors a failed batch reports (the first ones).
const MAX_REPORTED_ERRORS: usize = 1000;

/// `POST /v1/batches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatchRequest {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Option<Map<String, Value>>,
    pub output_expires_after: Option<OutputExpiresAfter>,
}

/// How long the output and error files are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputExpiresAfter {
    pub anchor: String,
    pub seconds: i64,
}

/// Creates a batch from one of the tenant's `batch` files.
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
    let mut tx = state.pool.begin().await?;
    let output = FileId::new();
    let error_file = FileId::new();
    let expires = new
        .output_expires_secs
        .map(|secs| time::OffsetDateTime::now_utc() + time::Duration::seconds(secs));
    files::create_batch_files(&mut tx, tenant, new.id, output, error_file, expires).await?;
    let batch = batches::insert_running(&mut tx, &new, 0, output, error_file).await?;
    let read = record_lines(state, &mut tx, &new, batch.expires_at).await?;
    if !read.errors.is_empty() || read.total == 0 {
        // Nothing of the file is kept as work: the transaction goes, the failure is recorded.
        drop(tx);
        let mut errors = read.errors;
        if read.total == 0 {
            errors.push(json!({
                "code": "empty_file", "message": "The input file holds no requests.",
                "param": "input_file_id", "line": null,
            }));
        }
        let errors = json!({ "object": "list", "data": errors });
        return Ok(batches::insert_failed(&state.pool, &new, read.total, &errors).await?);
    }
    let batch = batches::set_total(&mut tx, new.id, read.total).await?;
    tx.commit().await?;
    super::publish::spawn(state, new.id);
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
        check_metadata(metadata)?;
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

/// OpenAI's metadata rules: at most 16 pairs, keys up to 64 characters, string values up to 512.
fn check_metadata(metadata: &Map<String, Value>) -> ApiResult<()> {
    let fits = metadata.len() <= 16
        && metadata.iter().all(|(key, value)| {
            key.chars().count() <= 64 && value.as_str().is_some_and(|v| v.chars().count() <= 512)
        });
    if fits {
        Ok(())
    } else {
        Err(ApiError::invalid_with_code(
            "Invalid 'metadata': at most 16 pairs, keys up to 64 characters, string values up to 512.",
            "metadata",
            "invalid_value",
        ))
    }
}

/// What reading the input file found.
struct ReadLines {
    /// Requests in the file (blank lines are not requests).
    total: i32,
    /// Lines that are not batch requests, as `errors.data` reports them.
    errors: Vec<Value>,
}

/// Reads the input file a chunk at a time and records its lines in `tx`.
async fn record_lines(
    state: &AppState,
    tx: &mut PgConnection,
    batch: &NewBatch,
    deadline: time::OffsetDateTime,
) -> ApiResult<ReadLines> {
    let mut read = ReadLines {
        total: 0,
        errors: Vec::new(),
    };
    let mut seen = HashSet::new();
    let mut rows = LineRows::default();
    let mut partial: Vec<u8> = Vec::new();
    let mut number: i32 = 0;
    let mut seq = 0;
    loop {
        let chunk = files::chunk(&mut *tx, batch.input_file_id, seq).await?;
        let last = chunk.is_none();
        let mut data = chunk.unwrap_or_default();
        seq += 1;
        if last {
            // The last line may lack its newline.
            data.push(b'\n');
        }
        let mut start = 0;
        for end in memchr_newlines(&data) {
            number += 1;
            let text: &[u8] = if partial.is_empty() {
                &data[start..end]
            } else {
                partial.extend_from_slice(&data[start..end]);
                &partial
            };
            if !text.iter().all(u8::is_ascii_whitespace) {
                read.total += 1;
                match line::check(text, &mut seen, state) {
                    Ok(checked) if read.errors.is_empty() => push(&mut rows, number, checked)?,
                    Ok(_) => {}
                    Err(error) => note(&mut read.errors, number, error),
                }
            }
            partial.clear();
            start = end + 1;
        }
        if last {
            break;
        }
        partial.extend_from_slice(&data[start..]);
        if rows.len() >= PAGE_LINES {
            rows.insert(tx, batch.tenant, batch.id, deadline).await?;
        }
    }
    if read.errors.is_empty() && !rows.is_empty() {
        rows.insert(tx, batch.tenant, batch.id, deadline).await?;
    }
    Ok(read)
}

fn memchr_newlines(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    data.iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'\n')
        .map(|(at, _)| at)
}

fn push(rows: &mut LineRows, number: i32, checked: CheckedLine) -> ApiResult<()> {
    match checked {
        CheckedLine::Run {
            custom_id,
            model,
            request,
        } => rows
            .push_job(JobId::new(), custom_id, model, &request)
            .map_err(ApiError::internal),
        CheckedLine::Refused { custom_id, error } => {
            let (status, body) = error.status_and_body();
            rows.push_refusal(number, custom_id, status.as_u16(), body);
            Ok(())
        }
    }
}

fn note(errors: &mut Vec<Value>, number: i32, error: LineError) {
    if errors.len() < MAX_REPORTED_ERRORS {
        errors.push(json!({
            "code": error.code, "message": error.message, "param": error.param, "line": number,
        }));
    }
}
