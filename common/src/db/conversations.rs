//! Conversations. Every query is scoped by tenant: another tenant's conversation does not exist.

use crate::db::Db;
use time::OffsetDateTime;

use crate::db::quotas::{self, OverQuota, Quota};
use crate::ids::{ConversationId, TenantId};

/// A conversation as stored, with its counters.
#[derive(Debug, Clone)]
pub struct ConversationRow {
    pub id: ConversationId,
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
    pub metadata: serde_json::Value,
    pub message_count: i32,
    pub created_at: OffsetDateTime,
    pub last_activity_at: OffsetDateTime,
}

/// The fields a client may set when creating a conversation.
#[derive(Debug, Clone, Default)]
pub struct NewConversation {
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
    pub metadata: serde_json::Value,
}

/// Creates a conversation, unless the tenant stores as many as its quota allows
/// (`max_conversations` from the settings, or the tenant's override; `None` is unlimited). The
/// tenant's usage row is locked while it is checked and written, so the quota holds however many
/// ingresses create conversations at once.
///
/// # Errors
/// Database errors.
pub async fn create(
    pool: &Db,
    tenant: TenantId,
    new: &NewConversation,
    max_conversations: Option<u32>,
) -> Result<Result<ConversationRow, OverQuota>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let usage = quotas::lock_usage(&mut tx, &[tenant], Quota::Conversations).await?;
    if let Some(over) = usage
        .get(&tenant)
        .and_then(|usage| usage.full(Quota::Conversations, max_conversations))
    {
        return Ok(Err(over));
    }
    let row = sqlx::query_as!(
        ConversationRow,
        r#"INSERT INTO conversations (id, tenant_id, title, system_prompt, model, metadata)
           VALUES ($1, $2, $3, $4, $5, $6)
           RETURNING id AS "id: ConversationId", title, system_prompt, model, metadata,
                     message_count, created_at, last_activity_at"#,
        ConversationId::new().as_uuid(),
        tenant.as_uuid(),
        new.title,
        new.system_prompt,
        new.model,
        new.metadata,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(row))
}

/// Creates `count` empty conversations for a tenant in one statement, all with the same title
/// and no system prompt, model or metadata, and returns their ids (UUIDv7, in order). For
/// loading many at once, as a benchmark does before it measures; a client creates one at a
/// time with [`create`].
///
/// # Errors
/// Database errors.
pub async fn create_many(
    pool: &Db,
    tenant: TenantId,
    title: Option<&str>,
    count: usize,
) -> Result<Vec<ConversationId>, sqlx::Error> {
    let ids: Vec<ConversationId> = (0..count).map(|_| ConversationId::new()).collect();
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    sqlx::query!(
        "INSERT INTO conversations (id, tenant_id, title)
         SELECT id, $2, $3 FROM unnest($1::uuid[]) AS new(id)",
        &uuids,
        tenant.as_uuid(),
        title,
    )
    .execute(pool)
    .await?;
    Ok(ids)
}

/// # Errors
/// Database errors.
pub async fn get(
    pool: &Db,
    tenant: TenantId,
    id: ConversationId,
) -> Result<Option<ConversationRow>, sqlx::Error> {
    sqlx::query_as!(
        ConversationRow,
        r#"SELECT id AS "id: ConversationId", title, system_prompt, model, metadata,
                  message_count, created_at, last_activity_at
             FROM conversations WHERE id = $1 AND tenant_id = $2"#,
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(pool)
    .await
}

/// Newest first. Returns up to `limit + 1` rows so the caller can tell whether there are more.
///
/// # Errors
/// Database errors.
pub async fn list(
    pool: &Db,
    tenant: TenantId,
    limit: i64,
    after: Option<ConversationId>,
) -> Result<Vec<ConversationRow>, sqlx::Error> {
    sqlx::query_as!(
        ConversationRow,
        r#"SELECT id AS "id: ConversationId", title, system_prompt, model, metadata,
                  message_count, created_at, last_activity_at
             FROM conversations
            WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id < $2)
            ORDER BY id DESC
            LIMIT $3"#,
        tenant.as_uuid(),
        after.map(|id| id.as_uuid()),
        limit + 1,
    )
    .fetch_all(pool)
    .await
}

/// Renames a conversation (`None` leaves it untitled); returns it as it now is, or `None` when
/// the tenant has no such conversation. Its last activity is left alone: a rename is not a turn.
///
/// # Errors
/// Database errors.
pub async fn rename(
    pool: &Db,
    tenant: TenantId,
    id: ConversationId,
    title: Option<&str>,
) -> Result<Option<ConversationRow>, sqlx::Error> {
    sqlx::query_as!(
        ConversationRow,
        r#"UPDATE conversations SET title = $3 WHERE id = $1 AND tenant_id = $2
           RETURNING id AS "id: ConversationId", title, system_prompt, model, metadata,
                     message_count, created_at, last_activity_at"#,
        id.as_uuid(),
        tenant.as_uuid(),
        title,
    )
    .fetch_optional(pool)
    .await
}

/// Deletes a conversation with its messages, jobs and feedback. Returns whether it existed.
///
/// # Errors
/// Database errors.
pub async fn delete(pool: &Db, tenant: TenantId, id: ConversationId) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        "DELETE FROM conversations WHERE id = $1 AND tenant_id = $2",
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// What clearing a conversation's history did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearOutcome {
    Cleared,
    NotFound,
    /// A reply is still being generated; clearing now would leave it without its question.
    Busy,
}

/// Deletes every message of a conversation; sequence numbers keep growing from where they were.
///
/// # Errors
/// Database errors.
pub async fn clear_history(
    pool: &Db,
    tenant: TenantId,
    id: ConversationId,
) -> Result<ClearOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Lock the conversation so no message can be sent while we clear.
    let found = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM jobs WHERE conversation_id = c.id AND status IN ('queued', 'running')) AS "busy!"
             FROM conversations c WHERE c.id = $1 AND c.tenant_id = $2 FOR UPDATE"#,
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => return Ok(ClearOutcome::NotFound),
        Some(true) => return Ok(ClearOutcome::Busy),
        Some(false) => {}
    }
    sqlx::query!(
        "DELETE FROM messages WHERE conversation_id = $1",
        id.as_uuid()
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE conversations SET message_count = 0, last_activity_at = now() WHERE id = $1",
        id.as_uuid(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ClearOutcome::Cleared)
}
