//! The JSON shapes of the public API, built from stored rows. Timestamps are Unix seconds, as in
//! the OpenAI API. The job's shape lives in `chatq_common::job::view`, because a job's terminal
//! event carries it too.

use chatq_common::db::conversations::ConversationRow;
use chatq_common::db::feedback::FeedbackRow;
use chatq_common::db::messages::MessageRow;
use chatq_common::ids::{ConversationId, JobId, MessageId};
pub use chatq_common::job::view::{JobErrorView, JobView};
use serde::Serialize;
use time::OffsetDateTime;

fn unix(at: OffsetDateTime) -> i64 {
    at.unix_timestamp()
}

/// `{"object":"list","data":[…],"has_more":bool,"first_id","last_id"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListView<T: Serialize> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

impl<T: Serialize> ListView<T> {
    pub fn new(data: Vec<T>, has_more: bool, id: impl Fn(&T) -> String) -> Self {
        Self {
            object: "list",
            first_id: data.first().map(&id),
            last_id: data.last().map(&id),
            data,
            has_more,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationView {
    pub id: ConversationId,
    pub object: &'static str,
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
    pub metadata: serde_json::Value,
    pub message_count: i32,
    pub created_at: i64,
    pub last_activity_at: i64,
}

impl From<ConversationRow> for ConversationView {
    fn from(row: ConversationRow) -> Self {
        Self {
            id: row.id,
            object: "conversation",
            title: row.title,
            system_prompt: row.system_prompt,
            model: row.model,
            metadata: row.metadata,
            message_count: row.message_count,
            created_at: unix(row.created_at),
            last_activity_at: unix(row.last_activity_at),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: MessageId,
    pub object: &'static str,
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub role: String,
    pub content: String,
    /// The job this message started (user) or that wrote it (assistant).
    pub job_id: Option<JobId>,
    pub created_at: i64,
}

impl From<MessageRow> for MessageView {
    fn from(row: MessageRow) -> Self {
        Self {
            id: row.id,
            object: "message",
            conversation_id: row.conversation_id,
            seq: row.seq,
            role: row.role,
            content: row.content,
            job_id: row.job_id,
            created_at: unix(row.created_at),
        }
    }
}

/// What sending a message answers: its job, and the user message it recorded (absent when a
/// replayed request's message was cleared from the history since).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TurnView {
    pub job: JobView,
    pub message: Option<MessageView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedbackView {
    pub object: &'static str,
    pub message_id: MessageId,
    pub rating: i16,
    pub comment: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<FeedbackRow> for FeedbackView {
    fn from(row: FeedbackRow) -> Self {
        Self {
            object: "feedback",
            message_id: row.message_id,
            rating: row.rating,
            comment: row.comment,
            created_at: unix(row.created_at),
            updated_at: unix(row.updated_at),
        }
    }
}
