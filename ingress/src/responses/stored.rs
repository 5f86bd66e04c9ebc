//! Reading and changing a stored response: retrieve (whole, or its events from a sequence
//! number), cancel, delete, and list its input items. Every step first finds the response among
//! the caller's tenant's, so another tenant's id is a 404 like an unknown one.

use chatq_common::db::jobs;
use chatq_common::db::responses::{self, ResponseRow};
use chatq_common::events::JobView;
use chatq_common::ids::ResponseId;
use serde_json::{Value, json};

use super::events::Translator;
use super::object::{response_json, status_of};
use super::stream::ResponseStream;
use crate::auth::Caller;
use crate::cancel::{Cancelled, cancel_job};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::submit::abandoned::AbandonGuard;

/// A response of the caller's tenant with its job as it stands.
async fn find(
    state: &AppState,
    caller: &Caller,
    id: ResponseId,
) -> ApiResult<(ResponseRow, JobView)> {
    let not_found = || ApiError::not_found("response", id);
    let row = responses::get(&state.pool, caller.tenant, id)
        .await?
        .ok_or_else(not_found)?;
    let job = jobs::get(&state.pool, caller.tenant, responses::job_of(id))
        .await?
        .ok_or_else(not_found)?;
    Ok((row, job.into()))
}

/// The Response object as it stands.
///
/// # Errors
/// 404 for no such response of the tenant's.
pub async fn retrieve(state: &AppState, caller: &Caller, id: ResponseId) -> ApiResult<Value> {
    let (row, job) = find(state, caller, id).await?;
    Ok(response_json(&row, &job, status_of(&job)))
}

/// The response's events after `starting_after` (all of them without it).
///
/// # Errors
/// 404 for no such response of the tenant's; 503 with no stream slot or no message bus.
pub async fn events(
    state: &AppState,
    caller: &Caller,
    id: ResponseId,
    starting_after: Option<u64>,
) -> ApiResult<ResponseStream> {
    let slot = state.event_streams.open(caller.tenant).await?;
    let (row, job) = find(state, caller, id).await?;
    let cursor = super::create::follow(state, responses::job_of(id)).await?;
    Ok(ResponseStream {
        cursor,
        translator: Translator::new(row, job),
        starting_after,
        slot,
        // A reader of a stored response never cancels it by leaving.
        abandon: AbandonGuard::new(state, caller.tenant, responses::job_of(id), true),
    })
}

/// Cancels a background response: a queued one is `cancelled` at once, a running one is stopped
/// at its worker. A finished response is answered as it is (cancelling is idempotent).
///
/// # Errors
/// 404 for no such response of the tenant's; 400 for one not created in the background.
pub async fn cancel(state: &AppState, caller: &Caller, id: ResponseId) -> ApiResult<Value> {
    let (row, _) = find(state, caller, id).await?;
    if !row.background {
        return Err(ApiError::invalid_with_code(
            "Only responses created with 'background': true can be cancelled.",
            "response_id",
            "invalid_value",
        ));
    }
    let job = match cancel_job(state, caller, responses::job_of(id)).await {
        Ok(Cancelled::Now(job) | Cancelled::Pending(job)) => job,
        Err(ApiError::Conflict { .. }) => find(state, caller, id).await?.1,
        Err(err) => return Err(err),
    };
    Ok(response_json(&row, &job, status_of(&job)))
}

/// Deletes a response and its job; one still running is cancelled first.
///
/// # Errors
/// 404 for no such response of the tenant's.
pub async fn delete(state: &AppState, caller: &Caller, id: ResponseId) -> ApiResult<Value> {
    let (_, job) = find(state, caller, id).await?;
    if !job.status.is_terminal() {
        match cancel_job(state, caller, responses::job_of(id)).await {
            Ok(_) | Err(ApiError::Conflict { .. } | ApiError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
    }
    if !responses::delete(&state.pool, caller.tenant, id).await? {
        return Err(ApiError::not_found("response", id));
    }
    Ok(json!({"id": id.to_string(), "object": "response", "deleted": true}))
}

/// Which input items to list.
#[derive(Debug, Default)]
pub struct ItemsPage {
    pub limit: usize,
    pub ascending: bool,
    pub after: Option<String>,
}

/// The response's input items, newest first unless `ascending`, `limit` after the item `after`.
///
/// # Errors
/// 404 for no such response of the tenant's, 400 for an unknown `after`.
pub async fn input_items(
    state: &AppState,
    caller: &Caller,
    id: ResponseId,
    page: ItemsPage,
) -> ApiResult<Value> {
    let (row, _) = find(state, caller, id).await?;
    let mut items = match row.input {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    if !page.ascending {
        items.reverse();
    }
    let start = match &page.after {
        Some(after) => {
            items
                .iter()
                .position(|item| item["id"].as_str() == Some(after.as_str()))
                .ok_or_else(|| {
                    ApiError::invalid_with_code(
                        format!("Invalid 'after': no input item '{after}' in this response."),
                        "after",
                        "invalid_value",
                    )
                })?
                + 1
        }
        None => 0,
    };
    let rest = items.get(start..).unwrap_or_default();
    let data: Vec<Value> = rest.iter().take(page.limit).cloned().collect();
    let has_more = rest.len() > data.len();
    Ok(json!({
        "object": "list",
        "first_id": data.first().map(|i| i["id"].clone()),
        "last_id": data.last().map(|i| i["id"].clone()),
        "data": data,
        "has_more": has_more,
    }))
}
