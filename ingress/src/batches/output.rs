//! A batch's output and error files, rendered from its jobs as they are read: a page of lines at a
//! time, so a download holds one page in memory, and so what is done so far can be downloaded
//! while the batch runs.
//!
//! Each line is `{id, custom_id, response: {status_code, request_id, body}, error}`, as OpenAI
//! writes it. The output file has the lines answered (`body` a chat completion, the same as
//! `POST /v1/chat/completions` answers); the error file has the lines refused as invalid and those
//! that failed after the job's last attempt (`body` the error the endpoint would have answered
//! with), then those the batch's window or a cancel ended before they ran (`response` null,
//! `error.code` `batch_expired` or `batch_cancelled`).

use axum::body::Bytes;
use chatq_common::db::batches;
use chatq_common::db::batches::lines::{self, LineJob, Refusal};
use chatq_common::db::files::{self, FileContents, FileRow};
use chatq_common::events::JobView;
use chatq_common::ids::{BatchId, JobId, TenantId};
use chatq_common::job::JobStatus;
use futures::{Stream, StreamExt as _};
use serde_json::{Value, json};

use crate::chat_api::{ChatCompletion, ChunkWriter, completion_id};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Lines rendered per page.
const PAGE: i64 = 500;

/// Where rendering a file has got to.
enum Cursor {
    /// The error file's refused lines, after this line number.
    Refusals(i32),
    /// Jobs, after this one.
    Jobs(Option<JobId>),
}

/// The file's lines, a page of them per item. (The caller found the file for its tenant.)
pub fn lines(
    state: AppState,
    file: &FileRow,
) -> impl Stream<Item = Result<Bytes, sqlx::Error>> + use<> {
    let answered = file.contents == FileContents::BatchOutput;
    let start = if answered {
        Cursor::Jobs(None)
    } else {
        Cursor::Refusals(0)
    };
    let batch = file.batch_id;
    futures::stream::try_unfold(start, move |cursor| {
        let state = state.clone();
        async move {
            let Some(batch) = batch else {
                return Ok(None);
            };
            // A page that renders nothing (the refusals ran out) moves on to the jobs at once.
            let mut cursor = cursor;
            loop {
                match cursor {
                    Cursor::Refusals(after) => {
                        let page = lines::refusals(&state.pool, batch, after, PAGE).await?;
                        let Some(last) = page.last().map(|r| r.line) else {
                            cursor = Cursor::Jobs(None);
                            continue;
                        };
                        let text = page
                            .iter()
                            .map(|refusal| refused_line(batch, refusal))
                            .collect::<String>();
                        return Ok(Some((Bytes::from(text), Cursor::Refusals(last))));
                    }
                    Cursor::Jobs(after) => {
                        let page = lines::ended(&state.pool, batch, answered, after, PAGE).await?;
                        let Some(last) = page.last().map(|l| l.job.id) else {
                            return Ok(None);
                        };
                        let text = page.into_iter().map(job_line).collect::<String>();
                        return Ok(Some((Bytes::from(text), Cursor::Jobs(Some(last)))));
                    }
                }
            }
        }
    })
}

/// The size of a batch's file: measured by rendering it, and noted once its batch has ended (it
/// cannot change after that).
///
/// # Errors
/// Database errors.
pub async fn measure(state: &AppState, tenant: TenantId, file: &FileRow) -> ApiResult<i64> {
    let ended = match file.batch_id {
        Some(batch) => batch_ended(state, tenant, batch).await?,
        None => true,
    };
    let mut bytes: i64 = 0;
    let mut pages = std::pin::pin!(lines(state.clone(), file));
    while let Some(page) = pages.next().await {
        bytes += i64::try_from(page?.len()).unwrap_or(i64::MAX);
    }
    if ended {
        files::note_size(&state.pool, file.id, bytes).await?;
    }
    Ok(bytes)
}

async fn batch_ended(state: &AppState, tenant: TenantId, batch: BatchId) -> ApiResult<bool> {
    Ok(batches::get(&state.pool, tenant, batch)
        .await?
        .is_none_or(|batch| {
            matches!(
                batch.status.as_str(),
                "completed" | "failed" | "expired" | "cancelled"
            )
        }))
}

/// `batch_req_…`: the id of one line's request.
fn request_id(job: JobId) -> String {
    format!("batch_req_{}", job.as_uuid().simple())
}

fn refused_line(batch: BatchId, refusal: &Refusal) -> String {
    let id = format!("batch_req_{}_{}", batch.as_uuid().simple(), refusal.line);
    let mut line = json!({
        "id": id,
        "custom_id": refusal.custom_id,
        "response": {
            "status_code": refusal.status_code,
            "request_id": id,
            "body": refusal.body,
        },
        "error": null,
    })
    .to_string();
    line.push('\n');
    line
}

fn job_line(line: LineJob) -> String {
    let id = line.job.id;
    let status = line.job.status();
    let writer = ChunkWriter {
        id: completion_id(id),
        created: line.job.created_at.unix_timestamp(),
        model: line.job.model.clone(),
        include_usage: false,
        choices: 1,
    };
    let (response, error) = match status {
        JobStatus::Expired | JobStatus::Cancelled => {
            let code = if status == JobStatus::Expired {
                "batch_expired"
            } else {
                "batch_cancelled"
            };
            let message = line
                .job
                .error_message
                .clone()
                .unwrap_or_else(|| format!("The request ended {status} before it ran."));
            (Value::Null, json!({ "code": code, "message": message }))
        }
        _ => {
            let (status_code, body) =
                match ChatCompletion::from_job(JobView::from(line.job), writer) {
                    Ok(completion) => (200, json!(completion)),
                    Err(error) => answer_of(&error),
                };
            (
                json!({ "status_code": status_code, "request_id": id.to_string(), "body": body }),
                Value::Null,
            )
        }
    };
    let mut text = json!({
        "id": request_id(id),
        "custom_id": line.custom_id,
        "response": response,
        "error": error,
    })
    .to_string();
    text.push('\n');
    text
}

fn answer_of(error: &ApiError) -> (u16, Value) {
    let (status, body) = error.status_and_body();
    (status.as_u16(), body.to_value())
}
