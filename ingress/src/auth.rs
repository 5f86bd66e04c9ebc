//! Authentication: `Authorization: Bearer <api key>` names a tenant; everything a key can see is
//! its tenant's.
//!
//! Keys that cannot be chatq keys are rejected before any lookup; the others are looked up
//! through the [`KeyDirectory`](crate::key_directory::KeyDirectory), which caches known and
//! unknown keys apart and bounds what unknown keys may cost. Once the key is known, its request
//! counts against its rate limit.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chatq_common::api_key::looks_like_key;
use chatq_common::db::keys::KeyOwner;
use chatq_common::ids::TenantId;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub tenant: TenantId,
    pub owner: KeyOwner,
}

/// A caller whose key has the admin scope (its tenant) or the operator scope (every tenant).
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Caller);

impl Admin {
    /// The tenant whose data the caller may see and change; `None` for an operator, who may
    /// see every tenant's.
    pub fn tenant_scope(&self) -> Option<TenantId> {
        (!self.0.owner.is_operator).then_some(self.0.tenant)
    }
}

/// A caller whose key has the operator scope: the fleet (queue, workers).
#[derive(Debug, Clone, Copy)]
pub struct Operator;

/// The address the request came from (the proxy's, behind one).
fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = peer(parts);
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::Unauthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'; \
                 `chatq keys create --tenant NAME` makes one."
                    .into(),
            ));
        };
        let Some(key) = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
        else {
            state.keys.failed(peer).await;
            return Err(ApiError::Unauthenticated(
                "The Authorization header must be 'Bearer <key>'.".into(),
            ));
        };
        if !looks_like_key(key) {
            return Err(state.keys.failed(peer).await);
        }
        let owner = state.keys.owner(key, peer).await?;
        // Limited on the key itself, however the header spelled it.
        state.key_limits.check(owner.key_id)?;
        Ok(Caller {
            tenant: owner.tenant_id,
            owner,
        })
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !(caller.owner.is_admin || caller.owner.is_operator) {
            return Err(ApiError::Forbidden(
                "This endpoint needs an admin key (`chatq keys create --tenant NAME --admin`)."
                    .into(),
            ));
        }
        Ok(Admin(caller))
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !caller.owner.is_operator {
            return Err(ApiError::Forbidden(
                "This endpoint shows the whole fleet and needs an operator key \
                 (`chatq keys create --tenant NAME --operator`)."
                    .into(),
            ));
        }
        Ok(Operator)
    }
}
