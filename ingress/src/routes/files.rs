//! Files: upload, list, get, download, delete (the OpenAI Files API, for batches).

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chatq_common::db::files as stored;
use chatq_common::ids::FileId;
use serde::{Deserialize, Serialize};

use super::conversations::{after_id, page_size};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, QueryParams};
use crate::files::upload::UploadForm;
use crate::files::{self, FileView};
use crate::state::AppState;
use crate::views::ListView;

/// Default and largest page sizes (OpenAI's list of files pages up to 10,000).
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 10_000;

/// `POST /v1/files` (multipart: `purpose`, `file`).
#[utoipa::path(post, path = "/v1/files", tag = "batches",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "The stored file.", body = FileView), crate::openapi::ApiErrors))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    form: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<FileView>> {
    let form = form.map_err(|rejection| ApiError::InvalidRequest {
        message: format!(
            "Send the file as multipart/form-data with 'purpose' and 'file' parts ({}).",
            rejection.body_text()
        ),
        param: None,
        code: Some("invalid_multipart"),
    })?;
    let file = files::upload::store(&state.pool, &state.limits, caller.tenant, form).await?;
    let bytes = file.bytes.unwrap_or(0);
    Ok(Json(FileView::new(file, bytes)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    after: Option<String>,
    purpose: Option<String>,
    /// Only `desc` (newest first) is served.
    order: Option<String>,
}

/// `GET /v1/files`: newest first, `?limit&after&purpose`.
#[utoipa::path(get, path = "/v1/files", tag = "batches", params(ListQuery),
    responses((status = 200, description = "The tenant's files, newest first.", body = ListView<FileView>), crate::openapi::ApiErrors))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListView<FileView>>> {
    let limit = page_size(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    if query.order.as_deref().is_some_and(|order| order != "desc") {
        return Err(ApiError::invalid_with_code(
            "Invalid 'order': files are listed newest first ('desc').",
            "order",
            "invalid_value",
        ));
    }
    let after = after_id::<FileId>(query.after)?;
    let mut rows = stored::list(
        &state.pool,
        caller.tenant,
        query.purpose.as_deref(),
        after,
        limit,
    )
    .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let mut data = Vec::with_capacity(rows.len());
    for row in rows {
        data.push(files::shown(&state, caller.tenant, row).await?);
    }
    Ok(Json(ListView::new(data, has_more, |f: &FileView| {
        f.id.to_string()
    })))
}

/// `GET /v1/files/{id}`.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "batches", params(("id" = FileId, Path, description = "The file's id.")),
    responses((status = 200, description = "The file.", body = FileView), crate::openapi::ApiErrors))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<FileId>,
) -> ApiResult<Json<FileView>> {
    Ok(Json(files::view(&state, caller.tenant, id).await?))
}

/// `GET /v1/files/{id}/content`: the bytes, streamed.
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "batches", params(("id" = FileId, Path, description = "The file's id.")),
    responses((status = 200, description = "The file's bytes.", content_type = "application/octet-stream", body = Vec<u8>), crate::openapi::ApiErrors))]
pub async fn content(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<FileId>,
) -> ApiResult<Response> {
    let body: Body = files::content(&state, caller.tenant, id).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    id: FileId,
    object: &'static str,
    deleted: bool,
}

/// `DELETE /v1/files/{id}`.
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "batches", params(("id" = FileId, Path, description = "The file's id.")),
    responses((status = 200, description = "The file is deleted.", body = Deleted), crate::openapi::ApiErrors))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<FileId>,
) -> ApiResult<Json<Deleted>> {
    if !stored::delete(&state.pool, caller.tenant, id).await? {
        return Err(ApiError::not_found("file", id));
    }
    Ok(Json(Deleted {
        id,
        object: "file",
        deleted: true,
    }))
}
