//! Authentication: `Authorization: Bearer <api key>` names a tenant; everything a key can see is
//! its tenant's.
//!
//! Lookups are cached for a short while (a hit costs no database round trip; a revoked key stops
//! working within [`KEY_CACHE_TTL`]). Keys that cannot be chatq keys are rejected before any
//! lookup, and unknown keys are cached too, so guessing costs the database nothing.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chatq_common::api_key::{hash_key, looks_like_key};
use chatq_common::db::keys::{self, KeyOwner};
use chatq_common::ids::TenantId;

use crate::error::ApiError;
use crate::state::AppState;

/// How long a key lookup is reused.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(30);

/// Cached key lookups, by key hash. `None` caches "no such key".
pub type KeyCache = moka::future::Cache<[u8; 32], Option<KeyOwner>>;

pub fn key_cache() -> KeyCache {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(KEY_CACHE_TTL)
        .build()
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub tenant: TenantId,
    pub owner: KeyOwner,
}

/// A caller whose key has the admin scope.
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'; \
                 `chatq keys create --tenant NAME` makes one."
                    .into(),
            )
        })?;
        let key = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthenticated("The Authorization header must be 'Bearer <key>'.".into())
            })?;
        let invalid = || ApiError::Unauthenticated("Incorrect API key provided.".into());
        if !looks_like_key(key) {
            return Err(invalid());
        }
        let hash = hash_key(key);
        let pool = state.pool.clone();
        let owner = state
            .keys
            .try_get_with(
                hash,
                async move { keys::find_key_owner(&pool, &hash).await },
            )
            .await
            .map_err(|err| match std::sync::Arc::into_inner(err) {
                Some(err) => ApiError::from(err),
                None => ApiError::internal(anyhow::anyhow!("key lookup failed")),
            })?
            .ok_or_else(invalid)?;
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
        if !caller.owner.is_admin {
            return Err(ApiError::Forbidden(
                "This endpoint needs an admin key (`chatq keys create --tenant NAME --admin`)."
                    .into(),
            ));
        }
        Ok(Admin(caller))
    }
}
