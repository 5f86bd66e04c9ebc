//! `GET /v1/models` and `GET /v1/models/{id}`: the models clients may ask for.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::ListView;

#[derive(Debug, Serialize)]
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

pub async fn list(State(state): State<AppState>, _caller: Caller) -> Json<ListView<ModelView>> {
    let data = configured(&state)
        .iter()
        .map(|id| view(&state, id))
        .collect();
    Json(ListView::new(data, false, |m: &ModelView| m.id.clone()))
}

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
