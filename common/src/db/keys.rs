//! Tenants and their API keys.

use sqlx::PgPool;

use crate::api_key::NewApiKey;
use crate::ids::{ApiKeyId, TenantId};

/// What an API key authenticates as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    pub key_id: ApiKeyId,
    pub tenant_id: TenantId,
    pub is_admin: bool,
}

/// A key just created, with the plaintext to show once.
#[derive(Debug)]
pub struct CreatedKey {
    pub key_id: ApiKeyId,
    pub tenant_id: TenantId,
    pub plaintext: String,
}

/// Creates a key for the named tenant, creating the tenant if it is new.
///
/// # Errors
/// Database errors.
pub async fn create_key(
    pool: &PgPool,
    tenant_name: &str,
    is_admin: bool,
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
        "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, is_admin) VALUES ($1, $2, $3, $4, $5)",
        key_id.as_uuid(),
        tenant_id.as_uuid(),
        &key.hash[..],
        key.prefix,
        is_admin,
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

/// The owner of a key, if the key exists and is not revoked.
///
/// # Errors
/// Database errors.
pub async fn find_key_owner(
    pool: &PgPool,
    hash: &[u8; 32],
) -> Result<Option<KeyOwner>, sqlx::Error> {
    sqlx::query_as!(
        KeyOwner,
        r#"SELECT id AS "key_id: ApiKeyId", tenant_id AS "tenant_id: TenantId", is_admin
             FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL"#,
        &hash[..],
    )
    .fetch_optional(pool)
    .await
}

/// Whether any key exists yet (a fresh installation has none).
///
/// # Errors
/// Database errors.
pub async fn any_key_exists(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let exists = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM api_keys) AS "exists!""#)
        .fetch_one(pool)
        .await?;
    Ok(exists)
}
