//! `POST /v1/files`: a multipart upload streamed into Postgres a chunk at a time.
//!
//! The file's bytes never sit whole in memory: each part of the body is appended to a buffer of
//! [`CHUNK_BYTES`], written out as a `file_chunks` row when full. The file row and every chunk
//! are written in one transaction, committed only when the whole upload was read and passed its
//! checks, so an upload that is too large, malformed or cut off leaves nothing behind.

use axum::extract::Multipart;
use axum::extract::multipart::{Field, MultipartError};
use chatq_common::db::Db;
use chatq_common::db::files::{self, FileRow};
use chatq_common::ids::{FileId, TenantId};
use chatq_common::settings::LimitSettings;
use sqlx::PgConnection;

use crate::error::{ApiError, ApiResult};

/// Bytes per stored chunk: large enough that a 200 MB file is 200 rows, small enough that a
/// download holds little at a time.
const CHUNK_BYTES: usize = 1024 * 1024;

/// How much of an oversized upload is read and thrown away before the 413 is sent, as a multiple
/// of the limit (see `crate::body_limit` for why it is read at all).
const DRAIN_FACTOR: u64 = 4;

/// The form `POST /v1/files` takes, as the OpenAPI document describes it. The upload itself
/// reads the parts one by one as they stream in, never into this.
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "a description of the multipart form; the parts are streamed"
)]
pub struct UploadForm {
    /// What the file is for: `batch` to start a batch with.
    purpose: String,
    /// The file: JSON lines, one request each.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// The purposes OpenAI's Files API accepts. Only `batch` files can start a batch.
const PURPOSES: &[&str] = &[
    "batch",
    "assistants",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// Longest file name kept.
const MAX_FILENAME_CHARS: usize = 255;

/// Reads the upload and stores it; returns the file as committed.
///
/// # Errors
/// 400 for a body that is not multipart, a missing or unknown purpose, a missing file part or too
/// many lines; 413 for a file over `max_file_bytes`.
pub async fn store(
    pool: &Db,
    limits: &LimitSettings,
    tenant: TenantId,
    mut form: Multipart,
) -> ApiResult<FileRow> {
    let mut tx = pool.begin().await?;
    let id = FileId::new();
    let mut purpose: Option<String> = None;
    let mut stored: Option<Stored> = None;
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        match field.name() {
            Some("purpose") => {
                let text = field.text().await.map_err(unreadable)?;
                purpose = Some(text.trim().to_owned());
            }
            Some("file") => {
                if stored.is_some() {
                    return Err(ApiError::invalid(
                        "Send one 'file' part per upload.",
                        "file",
                    ));
                }
                let filename: String = field
                    .file_name()
                    .unwrap_or("upload.jsonl")
                    .chars()
                    .take(MAX_FILENAME_CHARS)
                    .collect();
                files::begin_upload(&mut tx, tenant, id, &filename).await?;
                stored = Some(write_file(&mut tx, id, field, limits).await?);
            }
            other => {
                let name = other.unwrap_or("").to_owned();
                return Err(ApiError::invalid_with_code(
                    format!("Unrecognized form field '{name}': send 'purpose' and 'file'."),
                    name,
                    "unknown_parameter",
                ));
            }
        }
    }
    let Some(purpose) = purpose.filter(|p| !p.is_empty()) else {
        return Err(ApiError::invalid_with_code(
            "Missing required parameter: 'purpose'.",
            "purpose",
            "missing_required_parameter",
        ));
    };
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid_with_code(
            format!(
                "Invalid 'purpose': '{purpose}' is not one of {}.",
                PURPOSES.join(", ")
            ),
            "purpose",
            "invalid_value",
        ));
    }
    let Some(stored) = stored else {
        return Err(ApiError::invalid_with_code(
            "Missing required parameter: 'file'.",
            "file",
            "missing_required_parameter",
        ));
    };
    let file = files::finish_upload(&mut tx, id, &purpose, stored.bytes, stored.lines).await?;
    tx.commit().await?;
    Ok(file)
}

/// What an upload's file part turned out to be.
struct Stored {
    bytes: i64,
    lines: i64,
}

/// Streams the file part into chunks, counting bytes and lines against their limits.
async fn write_file(
    tx: &mut PgConnection,
    id: FileId,
    mut field: Field<'_>,
    limits: &LimitSettings,
) -> ApiResult<Stored> {
    let mut buffer = Vec::with_capacity(CHUNK_BYTES);
    let mut seq = 0;
    let mut bytes: u64 = 0;
    let mut newlines: u64 = 0;
    let mut last = b'\n';
    while let Some(piece) = field.chunk().await.map_err(unreadable)? {
        bytes += piece.len() as u64;
        if bytes > limits.max_file_bytes {
            drain(
                field,
                bytes,
                limits.max_file_bytes.saturating_mul(DRAIN_FACTOR),
            )
            .await;
            return Err(ApiError::ContentTooLarge {
                message: format!(
                    "The file is larger than the {}-byte limit (max_file_bytes).",
                    limits.max_file_bytes
                ),
                param: "file".into(),
            });
        }
        newlines += piece.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(&end) = piece.last() {
            last = end;
        }
        if newlines > limits.max_file_lines {
            return Err(too_many_lines(limits));
        }
        let mut rest = &piece[..];
        while !rest.is_empty() {
            let take = rest.len().min(CHUNK_BYTES - buffer.len());
            buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buffer.len() == CHUNK_BYTES {
                files::write_chunk(tx, id, seq, &buffer).await?;
                seq += 1;
                buffer.clear();
            }
        }
    }
    if !buffer.is_empty() {
        files::write_chunk(tx, id, seq, &buffer).await?;
    }
    // A last line without its newline is a line too.
    let lines = newlines + u64::from(last != b'\n');
    if lines > limits.max_file_lines {
        return Err(too_many_lines(limits));
    }
    Ok(Stored {
        bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        lines: i64::try_from(lines).unwrap_or(i64::MAX),
    })
}

fn too_many_lines(limits: &LimitSettings) -> ApiError {
    ApiError::invalid_with_code(
        format!(
            "The file has more than {} lines, the most one file may hold (max_file_lines).",
            limits.max_file_lines
        ),
        "file",
        "too_many_lines",
    )
}

/// Reads the rest of an oversized part, up to `cap` bytes in all, so the client (which writes its
/// whole request before reading) gets to read the 413.
async fn drain(mut field: Field<'_>, mut read: u64, cap: u64) {
    while read <= cap {
        match field.chunk().await {
            Ok(Some(piece)) => read += piece.len() as u64,
            _ => return,
        }
    }
}

fn unreadable(err: MultipartError) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("The multipart body could not be read: {}.", err.body_text()),
        param: None,
        code: Some("invalid_multipart"),
    }
}
