//! Webhook endpoints: what a tenant registers, checked before anything is stored, and how an
//! endpoint is shown. The secret is generated here and shown once, in the answer to its creation;
//! it is stored for signing, and never shown or logged again.

use chatq_common::db::webhooks::{self as stored, EndpointRow, NewEndpoint};
use chatq_common::ids::{TenantId, WebhookId};
use chatq_common::webhooks::events::{EVENT_TYPES, is_known_pattern};
use chatq_common::webhooks::signing::WebhookSecret;
use chatq_common::webhooks::target::{self, TargetError};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AppState;

/// Longest description.
const MAX_DESCRIPTION_CHARS: usize = 512;
/// Most event patterns one endpoint lists.
const MAX_EVENTS: usize = 32;

/// `POST /v1/webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    pub url: String,
    /// Event types (`job.succeeded`) or a family's wildcard (`job.*`).
    pub events: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// An endpoint as shown: its secret only in the answer to its creation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: WebhookId,
    pub object: &'static str,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<EndpointRow> for WebhookView {
    fn from(row: EndpointRow) -> Self {
        Self {
            id: row.id,
            object: "webhook",
            url: row.url,
            events: row.events,
            description: row.description,
            created_at: row.created_at.unix_timestamp(),
            secret: None,
        }
    }
}

/// Checks a new endpoint and records it; the answer carries its secret, once.
///
/// # Errors
/// 400 for a URL that may not receive deliveries or an unknown event; 409 when the tenant has
/// as many endpoints as it may.
pub async fn register(
    state: &AppState,
    tenant: TenantId,
    request: CreateWebhook,
) -> Result<WebhookView, ApiError> {
    let url = target::parse(&request.url).map_err(|err| url_error(&err))?;
    let events = check_events(request.events)?;
    if let Some(description) = &request.description
        && description.chars().count() > MAX_DESCRIPTION_CHARS
    {
        return Err(ApiError::invalid_with_code(
            format!("Invalid 'description': longer than {MAX_DESCRIPTION_CHARS} characters."),
            "description",
            "invalid_value",
        ));
    }
    target::check(&url, state.webhooks.allow_private_targets)
        .await
        .map_err(|err| url_error(&err))?;
    let secret = WebhookSecret::generate();
    let new = NewEndpoint {
        id: WebhookId::new(),
        tenant,
        url: url.to_string(),
        events,
        description: request.description,
        secret: secret.clone(),
    };
    let max = state.webhooks.max_endpoints;
    let Some(row) = stored::create(&state.pool, &new, max).await? else {
        return Err(ApiError::Conflict {
            code: "too_many_webhooks",
            message: format!(
                "This tenant already has {max} webhook endpoints, the most it may have; delete one first."
            ),
        });
    };
    let mut view = WebhookView::from(row);
    view.secret = Some(secret.reveal());
    Ok(view)
}

fn url_error(err: &TargetError) -> ApiError {
    let code = match err {
        TargetError::NotPublic { .. } => "url_not_allowed",
        TargetError::Unresolved(_) => "url_unresolved",
        TargetError::Invalid(_) => "invalid_url",
    };
    ApiError::invalid_with_code(format!("Invalid 'url': {err}"), "url", code)
}

/// The event patterns, each known, without repeats, in the order given.
fn check_events(events: Vec<String>) -> Result<Vec<String>, ApiError> {
    if events.is_empty() || events.len() > MAX_EVENTS {
        return Err(ApiError::invalid_with_code(
            format!("Invalid 'events': list between 1 and {MAX_EVENTS} event types."),
            "events",
            "invalid_value",
        ));
    }
    let mut kept: Vec<String> = Vec::with_capacity(events.len());
    for event in events {
        if !is_known_pattern(&event) {
            let shown: String = event.chars().take(64).collect();
            return Err(ApiError::invalid_with_code(
                format!(
                    "Invalid 'events': unknown event type '{shown}'. Known types: {}, or a family's wildcard (job.*, response.*, batch.*).",
                    EVENT_TYPES.join(", ")
                ),
                "events",
                "invalid_value",
            ));
        }
        if !kept.contains(&event) {
            kept.push(event);
        }
    }
    Ok(kept)
}
