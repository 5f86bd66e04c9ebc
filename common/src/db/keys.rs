//! Tenants and their API keys.

use crate::db::Db;
use time::OffsetDateTime;

use crate::api_key::NewApiKey;
use crate::ids::{ApiKeyId, TenantId};

/// What an API key authenticates as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    pub key_id: ApiKeyId,
    pub tenant_id: TenantId,
    /// The admin scope: its tenant's dead letters.
    pub is_admin: bool,
    /// The operator scope: the whole fleet (every tenant's dead letters, the queue, workers).
    pub is_operator: bool,
    /// When the key stops working (checked on every request, cached or not).
    pub expires_at: Option<OffsetDateTime>,
}

impl KeyOwner {
    /// Whether the key has expired at `now`.
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// What a new key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// Its tenant's conversations, jobs and completions.
    Tenant,
    /// As `Tenant`, and its tenant's dead letters.
    Admin,
    /// As `Admin`, for every tenant, and the fleet's queue and workers.
    Operator,
}

/// A key as `chatq keys list` shows it (never the key itself).
#[derive(Debug, Clone)]
pub struct KeyListing {
    pub key_id: ApiKeyId,
    pub tenant: String,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    pub is_admin: bool,
    pub is_operator: bool,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A key just created, with the plaintext to show once.
#[derive(Debug)]
pub struct CreatedKey {
    pub key_id: ApiKeyId,
    pub tenant_id: TenantId,
    pub plaintext: String,
}

/// Creates a key for the named tenant, creating the tenant if it is new, with a scope and an
/// optional expiry.
///
/// # Errors
/// Database errors.
pub async fn create_key(
    pool: &Db,
    tenant_name: &str,
    scope: KeyScope,
    expires_at: Option<OffsetDateTime>,
) -> Result<CreatedKey, sqlx::Error> {
    let key = NewApiKey::generate();
    let key_id = ApiKeyId::new();
    let mut tx = pool.begin().await?;
    let tenant_id = sqlx::query_scalar!(
        r#"INSERT INTO tenants (id, name) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
           RETURNING id AS "id: TenantId""#,
        TenantId::new().as_uuid(),
        tenant_name,
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, is_admin, is_operator, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        key_id.as_uuid(),
        tenant_id.as_uuid(),
        &key.hash[..],
        key.prefix,
        scope != KeyScope::Tenant,
        scope == KeyScope::Operator,
        expires_at,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(CreatedKey {
        key_id,
        tenant_id,
        plaintext: key.plaintext,
    })
}

/// The owner of a key, if the key exists, is not revoked and has not expired.
///
/// # Errors
/// Database errors.
pub async fn find_key_owner(pool: &Db, hash: &[u8; 32]) -> Result<Option<KeyOwner>, sqlx::Error> {
    sqlx::query_as!(
        KeyOwner,
        r#"SELECT id AS "key_id: ApiKeyId", tenant_id AS "tenant_id: TenantId", is_admin,
                  is_operator, expires_at
             FROM api_keys
            WHERE key_hash = $1 AND revoked_at IS NULL
              AND (expires_at IS NULL OR expires_at > now())"#,
        &hash[..],
    )
    .fetch_optional(pool)
    .await
}

/// Every key, or the named tenant's, oldest first.
///
/// # Errors
/// Database errors.
pub async fn list_keys(
    pool: &Db,
    tenant_name: Option<&str>,
) -> Result<Vec<KeyListing>, sqlx::Error> {
    sqlx::query_as!(
        KeyListing,
        r#"SELECT k.id AS "key_id: ApiKeyId", t.name AS tenant, k.prefix, k.is_admin,
                  k.is_operator, k.created_at, k.expires_at, k.revoked_at
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
            WHERE $1::text IS NULL OR t.name = $1
            ORDER BY k.id"#,
        tenant_name,
    )
    .fetch_all(pool)
    .await
}

/// Revokes a key; `false` when there is no such key or it was revoked already.
///
/// # Errors
/// Database errors.
pub async fn revoke_key(pool: &Db, key_id: ApiKeyId) -> Result<bool, sqlx::Error> {
    let revoked = sqlx::query!(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        key_id.as_uuid(),
    )
    .execute(pool)
    .await?;
    Ok(revoked.rows_affected() == 1)
}

/// Whether any key exists yet (a fresh installation has none).
///
/// # Errors
/// Database errors.
pub async fn any_key_exists(pool: &Db) -> Result<bool, sqlx::Error> {
    let exists = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM api_keys) AS "exists!""#)
        .fetch_one(pool)
        .await?;
    Ok(exists)
}
