//! The OpenAI Files API, for batches: uploads ([`upload`]) and downloads of an upload's bytes
//! or of a batch's output and error files (rendered by `crate::batches::output`).
//!
//! Where the bytes live: Postgres, in chunks (see `migrations/…_files_and_batches.sql`). An
//! accepted file is accepted input like a recorded job, so it lives where accepted input lives:
//! in the source of truth, committed with its metadata, surviving a lost NATS store, deleted with
//! its tenant.

pub mod upload;

use axum::body::{Body, Bytes};
use chatq_common::db::Db;
use chatq_common::db::files::{self, FileContents, FileRow};
use chatq_common::ids::{FileId, TenantId};
use serde::Serialize;

use crate::batches::output;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A file as the API shows it (OpenAI's file object).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileView {
    pub id: FileId,
    pub object: &'static str,
    pub bytes: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub filename: String,
    pub purpose: String,
    /// Always `processed`: a file is usable as soon as its upload is answered.
    pub status: &'static str,
    pub status_details: Option<String>,
}

impl FileView {
    pub fn new(row: FileRow, bytes: i64) -> Self {
        FileView {
            id: row.id,
            object: "file",
            bytes,
            created_at: row.created_at.unix_timestamp(),
            expires_at: row.expires_at.map(|at| at.unix_timestamp()),
            filename: row.filename,
            purpose: row.purpose,
            status: "processed",
            status_details: None,
        }
    }
}

/// A file of the tenant, as the API shows it.
///
/// # Errors
/// 404 when the tenant has no such file.
pub async fn view(state: &AppState, tenant: TenantId, id: FileId) -> ApiResult<FileView> {
    let file = files::get(&state.pool, tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("file", id))?;
    shown(state, tenant, file).await
}

/// A stored file as the API shows it: a batch file whose size is not known yet is measured.
///
/// # Errors
/// Database errors.
pub async fn shown(state: &AppState, tenant: TenantId, file: FileRow) -> ApiResult<FileView> {
    let bytes = match file.bytes {
        Some(bytes) => bytes,
        None => output::measure(state, tenant, &file).await?,
    };
    Ok(FileView::new(file, bytes))
}

/// The bytes of a file, streamed.
///
/// # Errors
/// 404 when the tenant has no such file.
pub async fn content(state: &AppState, tenant: TenantId, id: FileId) -> ApiResult<Body> {
    let file = files::get(&state.pool, tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("file", id))?;
    Ok(match file.contents {
        FileContents::Upload => Body::from_stream(upload_bytes(state.pool.clone(), id)),
        FileContents::BatchOutput | FileContents::BatchErrors => {
            Body::from_stream(output::lines(state.clone(), &file))
        }
    })
}

/// An upload's chunks, read one at a time.
fn upload_bytes(pool: Db, id: FileId) -> impl futures::Stream<Item = Result<Bytes, sqlx::Error>> {
    futures::stream::try_unfold(0, move |seq| {
        let pool = pool.clone();
        async move {
            let chunk = files::chunk(&pool, id, seq).await?;
            Ok(chunk.map(|data| (Bytes::from(data), seq + 1)))
        }
    })
}
