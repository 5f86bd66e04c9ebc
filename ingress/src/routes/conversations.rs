//! Conversations: create, list, get, rename, delete, history, clear history.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chatq_common::db::conversations::{self, ClearOutcome, NewConversation};
use chatq_common::db::messages;
use chatq_common::ids::ConversationId;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, JsonBody, OptionalJsonBody, QueryParams};
use crate::state::AppState;
use crate::validate::{CreateConversation, RenameConversation};
use crate::views::{ConversationView, ListView, MessageView};

/// Default and largest page sizes.
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;
const DEFAULT_HISTORY_PAGE: i64 = 100;
const MAX_HISTORY_PAGE: i64 = 1000;

/// `POST /v1/conversations`. An empty body creates a conversation with every field unset.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations",
    request_body(content = Option<CreateConversation>, description = "Every field is optional; an empty body will do."),
    responses((status = 201, description = "The new conversation.", body = ConversationView), crate::openapi::ApiErrors))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    OptionalJsonBody(request): OptionalJsonBody<CreateConversation>,
) -> ApiResult<(StatusCode, Json<ConversationView>)> {
    request.validate(&state.limits)?;
    if let Some(model) = &request.model {
        crate::routes::models::ensure_offered(&state, model)?;
    }
    let new = NewConversation {
        title: request.title,
        system_prompt: request.system_prompt,
        model: request.model,
        metadata: serde_json::Value::Object(request.metadata.unwrap_or_default()),
    };
    let row = conversations::create(
        &state.pool,
        caller.tenant,
        &new,
        state.limits.tenant_max_conversations,
    )
    .await?
    .map_err(ApiError::over_quota)?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    after: Option<String>,
}

/// `?after=<id>`: the last id of the previous page, of the kind listed.
pub(crate) fn after_id<T: std::str::FromStr<Err = chatq_common::ids::InvalidId>>(
    after: Option<String>,
) -> Result<Option<T>, ApiError> {
    after
        .map(|after| {
            after.parse::<T>().map_err(|err| {
                ApiError::invalid_with_code(
                    format!("Invalid 'after': {err}."),
                    "after",
                    "invalid_id",
                )
            })
        })
        .transpose()
}

pub(crate) fn page_size(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(limit) => Err(ApiError::invalid_with_code(
            format!("Invalid 'limit': {limit} is not between 1 and {max}."),
            "limit",
            "invalid_value",
        )),
    }
}

#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", params(ListQuery),
    responses((status = 200, description = "The tenant's conversations, most recently active first.", body = ListView<ConversationView>), crate::openapi::ApiErrors))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListView<ConversationView>>> {
    let limit = page_size(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let after = after_id::<ConversationId>(query.after)?;
    let mut rows = conversations::list(&state.pool, caller.tenant, limit, after).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let data = rows.into_iter().map(ConversationView::from).collect();
    Ok(Json(ListView::new(
        data,
        has_more,
        |c: &ConversationView| c.id.to_string(),
    )))
}

#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations", params(("id" = ConversationId, Path, description = "The conversation's id.")),
    responses((status = 200, description = "The conversation.", body = ConversationView), crate::openapi::ApiErrors))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<ConversationId>,
) -> ApiResult<Json<ConversationView>> {
    conversations::get(&state.pool, caller.tenant, id)
        .await?
        .map(|row| Json(row.into()))
        .ok_or_else(|| ApiError::not_found("conversation", id))
}

/// `PATCH /v1/conversations/{id}`: rename it (`{"title": "…"}`); answers with the conversation.
#[utoipa::path(patch, path = "/v1/conversations/{id}", tag = "conversations", params(("id" = ConversationId, Path, description = "The conversation's id.")),
    request_body = RenameConversation,
    responses((status = 200, description = "The renamed conversation.", body = ConversationView), crate::openapi::ApiErrors))]
pub async fn rename(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<ConversationId>,
    JsonBody(request): JsonBody<RenameConversation>,
) -> ApiResult<Json<ConversationView>> {
    let title = request.validated_title()?;
    conversations::rename(&state.pool, caller.tenant, id, title)
        .await?
        .map(|row| Json(row.into()))
        .ok_or_else(|| ApiError::not_found("conversation", id))
}

#[utoipa::path(delete, path = "/v1/conversations/{id}", tag = "conversations", params(("id" = ConversationId, Path, description = "The conversation's id.")),
    responses((status = 204, description = "Deleted, with its messages."), crate::openapi::ApiErrors))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<ConversationId>,
) -> ApiResult<StatusCode> {
    if conversations::delete(&state.pool, caller.tenant, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("conversation", id))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<i64>,
    /// Only messages with a sequence number below this one (to page backwards).
    before: Option<i64>,
}

#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = ConversationId, Path, description = "The conversation's id."), HistoryQuery),
    responses((status = 200, description = "The conversation's messages, newest first.", body = ListView<MessageView>), crate::openapi::ApiErrors))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<ConversationId>,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> ApiResult<Json<ListView<MessageView>>> {
    let limit = page_size(query.limit, DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE)?;
    let (rows, has_more) =
        messages::history(&state.pool, caller.tenant, id, limit, query.before).await?;
    if rows.is_empty()
        && conversations::get(&state.pool, caller.tenant, id)
            .await?
            .is_none()
    {
        return Err(ApiError::not_found("conversation", id));
    }
    let data = rows.into_iter().map(MessageView::from).collect();
    Ok(Json(ListView::new(data, has_more, |m: &MessageView| {
        m.id.to_string()
    })))
}

#[utoipa::path(delete, path = "/v1/conversations/{id}/messages", tag = "conversations", params(("id" = ConversationId, Path, description = "The conversation's id.")),
    responses((status = 204, description = "The history is cleared; the conversation stays."), crate::openapi::ApiErrors))]
pub async fn clear_history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<ConversationId>,
) -> ApiResult<StatusCode> {
    match conversations::clear_history(&state.pool, caller.tenant, id).await? {
        ClearOutcome::Cleared => Ok(StatusCode::NO_CONTENT),
        ClearOutcome::NotFound => Err(ApiError::not_found("conversation", id)),
        ClearOutcome::Busy => Err(ApiError::Conflict {
            code: "conversation_busy",
            message: "A reply is still being generated for this conversation; wait for it (or cancel its job) before clearing the history.".into(),
        }),
    }
}
