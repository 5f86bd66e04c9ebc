//! Files: uploads (their bytes in `file_chunks`) and the output and error files of batches (no
//! bytes of their own: rendered from the batch's jobs). Every query is scoped by tenant: another
//! tenant's file does not exist; nor does a file past its `expires_at` (a batch's
//! `output_expires_after`), from that instant, before the retention sweep deletes it.

use sqlx::PgConnection;

use crate::db::Db;
use time::OffsetDateTime;

use crate::ids::{BatchId, FileId, TenantId};

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileContents {
    /// Bytes a client uploaded, in `file_chunks`.
    Upload,
    /// A batch's answered lines.
    BatchOutput,
    /// A batch's failed, refused, expired and cancelled lines.
    BatchErrors,
}

impl FileContents {
    fn parse(text: &str) -> Self {
        match text {
            "batch_output" => FileContents::BatchOutput,
            "batch_errors" => FileContents::BatchErrors,
            _ => FileContents::Upload,
        }
    }
}

/// A file as stored.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: FileId,
    pub purpose: String,
    pub filename: String,
    /// Null for a batch's file while its batch still runs (its size is not known yet).
    pub bytes: Option<i64>,
    pub lines: i64,
    pub batch_id: Option<BatchId>,
    pub contents: FileContents,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

struct RawFile {
    id: FileId,
    purpose: String,
    filename: String,
    bytes: Option<i64>,
    lines: i64,
    batch_id: Option<BatchId>,
    contents: String,
    created_at: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
}

impl From<RawFile> for FileRow {
    fn from(raw: RawFile) -> Self {
        FileRow {
            id: raw.id,
            purpose: raw.purpose,
            filename: raw.filename,
            bytes: raw.bytes,
            lines: raw.lines,
            batch_id: raw.batch_id,
            contents: FileContents::parse(&raw.contents),
            created_at: raw.created_at,
            expires_at: raw.expires_at,
        }
    }
}

/// Starts an upload, in the transaction its chunks are written in: the file exists for others
/// only once that commits.
///
/// # Errors
/// Database errors.
pub async fn begin_upload(
    tx: &mut PgConnection,
    tenant: TenantId,
    id: FileId,
    filename: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO files (id, tenant_id, purpose, filename, bytes) VALUES ($1, $2, '', $3, 0)",
        id.as_uuid(),
        tenant.as_uuid(),
        filename,
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Writes the `seq`th chunk of an upload.
///
/// # Errors
/// Database errors.
pub async fn write_chunk(
    tx: &mut PgConnection,
    id: FileId,
    seq: i32,
    data: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)",
        id.as_uuid(),
        seq,
        data,
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Ends an upload with what it turned out to be; returns the file.
///
/// # Errors
/// Database errors.
pub async fn finish_upload(
    tx: &mut PgConnection,
    id: FileId,
    purpose: &str,
    bytes: i64,
    lines: i64,
) -> Result<FileRow, sqlx::Error> {
    sqlx::query_as!(
        RawFile,
        r#"UPDATE files SET purpose = $2, bytes = $3, lines = $4 WHERE id = $1
           RETURNING id AS "id: FileId", purpose, filename, bytes, lines,
                     batch_id AS "batch_id: BatchId", contents, created_at, expires_at"#,
        id.as_uuid(),
        purpose,
        bytes,
        lines,
    )
    .fetch_one(tx)
    .await
    .map(FileRow::from)
}

/// Creates the output and error files of a new batch, in its transaction.
///
/// # Errors
/// Database errors.
pub async fn create_batch_files(
    tx: &mut PgConnection,
    tenant: TenantId,
    batch: BatchId,
    output: FileId,
    errors: FileId,
    expires_at: Option<OffsetDateTime>,
) -> Result<(), sqlx::Error> {
    let output_name = format!("{batch}_output.jsonl");
    let error_name = format!("{batch}_error.jsonl");
    sqlx::query!(
        "INSERT INTO files (id, tenant_id, purpose, filename, batch_id, contents, expires_at)
         VALUES ($1, $3, 'batch_output', $4, $6, 'batch_output', $7),
                ($2, $3, 'batch_output', $5, $6, 'batch_errors', $7)",
        output.as_uuid(),
        errors.as_uuid(),
        tenant.as_uuid(),
        output_name,
        error_name,
        batch.as_uuid(),
        expires_at,
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// A file, if it belongs to the tenant.
///
/// # Errors
/// Database errors.
pub async fn get(
    db: impl sqlx::PgExecutor<'_>,
    tenant: TenantId,
    id: FileId,
) -> Result<Option<FileRow>, sqlx::Error> {
    sqlx::query_as!(
        RawFile,
        r#"SELECT id AS "id: FileId", purpose, filename, bytes, lines,
                  batch_id AS "batch_id: BatchId", contents, created_at, expires_at
             FROM files WHERE id = $1 AND tenant_id = $2 AND (expires_at IS NULL OR expires_at > now())"#,
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(db)
    .await
    .map(|row| row.map(FileRow::from))
}

/// Newest first, optionally of one purpose. Returns up to `limit + 1` rows so the caller can tell
/// whether there are more.
///
/// # Errors
/// Database errors.
pub async fn list(
    pool: &Db,
    tenant: TenantId,
    purpose: Option<&str>,
    after: Option<FileId>,
    limit: i64,
) -> Result<Vec<FileRow>, sqlx::Error> {
    let rows = sqlx::query_as!(
        RawFile,
        r#"SELECT id AS "id: FileId", purpose, filename, bytes, lines,
                  batch_id AS "batch_id: BatchId", contents, created_at, expires_at
             FROM files
            WHERE tenant_id = $1 AND ($2::text IS NULL OR purpose = $2)
              AND ($3::uuid IS NULL OR id < $3) AND (expires_at IS NULL OR expires_at > now())
            ORDER BY id DESC
            LIMIT $4"#,
        tenant.as_uuid(),
        purpose,
        after.map(|id| id.as_uuid()),
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(FileRow::from).collect())
}

/// Deletes a file and its bytes. Returns whether the tenant had it.
///
/// # Errors
/// Database errors.
pub async fn delete(pool: &Db, tenant: TenantId, id: FileId) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM files WHERE id = $1 AND tenant_id = $2",
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected() > 0)
}

/// The `seq`th chunk of an upload, if there is one: read one at a time, so a download holds one
/// chunk in memory whatever the file's size.
///
/// # Errors
/// Database errors.
pub async fn chunk(
    db: impl sqlx::PgExecutor<'_>,
    id: FileId,
    seq: i32,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2",
        id.as_uuid(),
        seq,
    )
    .fetch_optional(db)
    .await
}

/// Notes the size of a batch's file once its batch has ended (it no longer changes).
///
/// # Errors
/// Database errors.
pub async fn note_size(pool: &Db, id: FileId, bytes: i64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE files SET bytes = $2 WHERE id = $1",
        id.as_uuid(),
        bytes
    )
    .execute(pool)
    .await?;
    Ok(())
}
