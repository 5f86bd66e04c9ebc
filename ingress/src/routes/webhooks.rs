//! Webhook endpoints: create (the secret shown once), list, get, delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chatq_common::db::webhooks as stored;
use chatq_common::ids::WebhookId;
use serde::{Deserialize, Serialize};

use super::conversations::{after_id, page_size};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, JsonBody, QueryParams};
use crate::state::AppState;
use crate::views::ListView;
use crate::webhooks::{self, CreateWebhook, WebhookView};

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

/// `POST /v1/webhooks`: 201 with the endpoint and its secret.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, description = "The endpoint, with its `whsec_` secret: shown this once.", body = WebhookView), crate::openapi::ApiErrors))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<WebhookView>)> {
    let view = webhooks::register(&state, caller.tenant, request).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    after: Option<String>,
}

/// `GET /v1/webhooks`: newest first, `?limit&after`, without secrets.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", params(ListQuery),
    responses((status = 200, description = "The tenant's endpoints, newest first, without secrets.", body = ListView<WebhookView>), crate::openapi::ApiErrors))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListView<WebhookView>>> {
    let limit = page_size(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let after = after_id::<WebhookId>(query.after)?;
    let mut rows = stored::list(&state.pool, caller.tenant, after, limit).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let data: Vec<WebhookView> = rows.into_iter().map(WebhookView::from).collect();
    Ok(Json(ListView::new(data, has_more, |w: &WebhookView| {
        w.id.to_string()
    })))
}

/// `GET /v1/webhooks/{id}`.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = WebhookId, Path, description = "The endpoint's id.")),
    responses((status = 200, description = "The endpoint, without its secret.", body = WebhookView), crate::openapi::ApiErrors))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<WebhookId>,
) -> ApiResult<Json<WebhookView>> {
    stored::get(&state.pool, caller.tenant, id)
        .await?
        .map(|row| Json(row.into()))
        .ok_or_else(|| ApiError::not_found("webhook", id))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    id: WebhookId,
    object: &'static str,
    deleted: bool,
}

/// `DELETE /v1/webhooks/{id}`: the endpoint and the deliveries still owed to it.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = WebhookId, Path, description = "The endpoint's id.")),
    responses((status = 200, description = "Deleted, with the deliveries still owed to it.", body = Deleted), crate::openapi::ApiErrors))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<WebhookId>,
) -> ApiResult<Json<Deleted>> {
    if !stored::delete(&state.pool, caller.tenant, id).await? {
        return Err(ApiError::not_found("webhook", id));
    }
    Ok(Json(Deleted {
        id,
        object: "webhook",
        deleted: true,
    }))
}
