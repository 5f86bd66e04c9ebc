//! `GET /v1/models` and `GET /v1/models/{id}`: the models clients may ask for.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::ListView;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

fn view(state: &AppState, id: &str) -> ModelView {
    ModelView {
        id: id.to_owned(),
        object: "model",
        created: state.started_at,
        owned_by: "chatq",
    }
}

/// The configured models: `CHATQ_MODELS`, plus the default model.
pub fn configured(state: &AppState) -> Vec<String> {
    let mut models: Vec<String> = state.models.iter().cloned().collect();
    if let Some(default) = state.default_model.as_deref()
        && !models.iter().any(|m| m == default)
    {
        models.insert(0, default.to_owned());
    }
    models
}

/// The one check of a model a request names against `CHATQ_MODELS`, on every route that takes
/// a model. An empty list accepts any name (the provider decides).
///
/// # Errors
/// 404 for a model that is not offered, as OpenAI answers an unknown model.
pub fn ensure_offered(state: &AppState, model: &str) -> ApiResult<()> {
    if state.models.is_empty() || configured(state).iter().any(|m| m == model) {
        return Ok(());
    }
    Err(ApiError::NotFound(format!(
        "The model '{model}' does not exist or you do not have access to it. GET /v1/models lists the models."
    )))
}

#[utoipa::path(get, path = "/v1/models", tag = "chat",
    responses((status = 200, description = "The models this deployment offers.", body = ListView<ModelView>), crate::openapi::ApiErrors))]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Json<ListView<ModelView>> {
    let data = configured(&state)
        .iter()
        .map(|id| view(&state, id))
        .collect();
    Json(ListView::new(data, false, |m: &ModelView| m.id.clone()))
}

#[utoipa::path(get, path = "/v1/models/{id}", tag = "chat", params(("id" = String, Path, description = "The model's name.")),
    responses((status = 200, description = "The model.", body = ModelView), crate::openapi::ApiErrors))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelView>> {
    if configured(&state).iter().any(|m| m == &id) {
        Ok(Json(view(&state, &id)))
    } else {
        Err(ApiError::NotFound(format!(
            "The model '{id}' does not exist."
        )))
    }
}
