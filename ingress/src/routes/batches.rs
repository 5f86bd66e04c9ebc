//! Batches: create, list, get, cancel (the OpenAI Batch API, on the batch lane).

use axum::Json;
use axum::extract::State;
use chatq_common::db::batches as stored;
use chatq_common::ids::BatchId;
use serde::Deserialize;

use super::conversations::{after_id, page_size};
use crate::auth::Caller;
use crate::batches::create::CreateBatchRequest;
use crate::batches::{self, BatchView};
use crate::error::ApiResult;
use crate::extract::{IdPath, JsonBody, QueryParams};
use crate::state::AppState;
use crate::views::ListView;

/// Default and largest page sizes, as OpenAI's.
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

/// `POST /v1/batches`.
#[utoipa::path(post, path = "/v1/batches", tag = "batches", request_body = CreateBatchRequest,
    responses((status = 200, description = "The batch, `validating`.", body = BatchView), crate::openapi::ApiErrors))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateBatchRequest>,
) -> ApiResult<Json<BatchView>> {
    let row = batches::create::create(&state, caller.tenant, request).await?;
    Ok(Json(batches::shown(&state, caller.tenant, row).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    after: Option<String>,
}

/// `GET /v1/batches`: newest first, `?limit&after`.
#[utoipa::path(get, path = "/v1/batches", tag = "batches", params(ListQuery),
    responses((status = 200, description = "The tenant's batches, newest first.", body = ListView<BatchView>), crate::openapi::ApiErrors))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListView<BatchView>>> {
    let limit = page_size(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let after = after_id::<BatchId>(query.after)?;
    let mut rows = stored::list(&state.pool, caller.tenant, after, limit).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let mut data = Vec::with_capacity(rows.len());
    for row in rows {
        data.push(batches::shown(&state, caller.tenant, row).await?);
    }
    Ok(Json(ListView::new(data, has_more, |b: &BatchView| {
        b.id.to_string()
    })))
}

/// `GET /v1/batches/{id}`.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches", params(("id" = BatchId, Path, description = "The batch's id.")),
    responses((status = 200, description = "The batch.", body = BatchView), crate::openapi::ApiErrors))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<BatchId>,
) -> ApiResult<Json<BatchView>> {
    Ok(Json(batches::view(&state, caller.tenant, id).await?))
}

/// `POST /v1/batches/{id}/cancel`.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches", params(("id" = BatchId, Path, description = "The batch's id.")),
    responses((status = 200, description = "The batch, `cancelling` or `cancelled`.", body = BatchView), crate::openapi::ApiErrors))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<BatchId>,
) -> ApiResult<Json<BatchView>> {
    Ok(Json(batches::cancel(&state, caller.tenant, id).await?))
}
