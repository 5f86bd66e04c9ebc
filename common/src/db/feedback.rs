//! Feedback on assistant messages: one rating per message, replaced when given again.

use crate::db::Db;
use time::OffsetDateTime;

use crate::ids::{MessageId, TenantId};

/// Feedback as stored.
#[derive(Debug, Clone)]
pub struct FeedbackRow {
    pub message_id: MessageId,
    pub rating: i16,
    pub comment: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// What recording feedback did.
#[derive(Debug, Clone)]
pub enum FeedbackOutcome {
    Saved(FeedbackRow),
    /// No such message for this tenant.
    NotFound,
    /// Only replies can be rated.
    NotAnAssistantMessage,
}

/// Records or replaces the feedback on a message.
///
/// # Errors
/// Database errors.
pub async fn upsert(
    pool: &Db,
    tenant: TenantId,
    message: MessageId,
    rating: i16,
    comment: Option<&str>,
) -> Result<FeedbackOutcome, sqlx::Error> {
    let role = sqlx::query_scalar!(
        "SELECT role FROM messages WHERE id = $1 AND tenant_id = $2",
        message.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(pool)
    .await?;
    match role.as_deref() {
        None => return Ok(FeedbackOutcome::NotFound),
        Some("assistant") => {}
        Some(_) => return Ok(FeedbackOutcome::NotAnAssistantMessage),
    }
    let row = sqlx::query_as!(
        FeedbackRow,
        r#"INSERT INTO feedback (message_id, tenant_id, rating, comment) VALUES ($1, $2, $3, $4)
           ON CONFLICT (message_id) DO UPDATE
              SET rating = EXCLUDED.rating, comment = EXCLUDED.comment, updated_at = now()
           RETURNING message_id AS "message_id: MessageId", rating, comment, created_at, updated_at"#,
        message.as_uuid(),
        tenant.as_uuid(),
        rating,
        comment,
    )
    .fetch_one(pool)
    .await?;
    Ok(FeedbackOutcome::Saved(row))
}

/// The feedback given on a message, if any (none for another tenant's message).
///
/// # Errors
/// Database errors.
pub async fn get(
    pool: &Db,
    tenant: TenantId,
    message: MessageId,
) -> Result<Option<FeedbackRow>, sqlx::Error> {
    sqlx::query_as!(
        FeedbackRow,
        r#"SELECT message_id AS "message_id: MessageId", rating, comment, created_at, updated_at
             FROM feedback WHERE message_id = $1 AND tenant_id = $2"#,
        message.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(pool)
    .await
}
