//! Messages of a conversation, in sequence order.

use crate::db::Db;
use time::OffsetDateTime;

use crate::ids::{ConversationId, JobId, MessageId, TenantId};

/// A stored message.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub role: String,
    pub content: String,
    pub job_id: Option<JobId>,
    pub created_at: OffsetDateTime,
}

/// A page of history: up to `limit` messages before `before` (exclusive), in ascending order, and
/// whether older ones remain.
///
/// # Errors
/// Database errors.
pub async fn history(
    pool: &Db,
    tenant: TenantId,
    conversation: ConversationId,
    limit: i64,
    before: Option<i64>,
) -> Result<(Vec<MessageRow>, bool), sqlx::Error> {
    let mut rows = sqlx::query_as!(
        MessageRow,
        r#"SELECT id AS "id: MessageId", conversation_id AS "conversation_id: ConversationId",
                  seq, role, content, job_id AS "job_id: JobId", created_at
             FROM messages
            WHERE conversation_id = $1 AND tenant_id = $2 AND ($3::bigint IS NULL OR seq < $3)
            ORDER BY seq DESC
            LIMIT $4"#,
        conversation.as_uuid(),
        tenant.as_uuid(),
        before,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    rows.reverse();
    Ok((rows, has_more))
}

/// One message, if it belongs to the tenant.
///
/// # Errors
/// Database errors.
pub async fn get(
    pool: &Db,
    tenant: TenantId,
    id: MessageId,
) -> Result<Option<MessageRow>, sqlx::Error> {
    sqlx::query_as!(
        MessageRow,
        r#"SELECT id AS "id: MessageId", conversation_id AS "conversation_id: ConversationId",
                  seq, role, content, job_id AS "job_id: JobId", created_at
             FROM messages WHERE id = $1 AND tenant_id = $2"#,
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(pool)
    .await
}
