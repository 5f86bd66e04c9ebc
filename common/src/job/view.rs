//! The public shape of a job, `{"object": "job", …}`: what `GET /v1/jobs/{id}` answers, what a
//! send answers with, and what a job's terminal event carries. It lives here, beside the wire
//! types, because workers build it (from the row their commit returned) and the ingress reads it.
//! Timestamps are Unix seconds, as in the OpenAI API.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::chat::Usage;
use crate::choices::Choice;
use crate::db::jobs::JobRow;
use crate::ids::{ConversationId, JobId, MessageId};
use crate::job::JobStatus;
use crate::reply_cache::CacheTier;

/// A job as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: JobId,
    /// Always `"job"`.
    pub object: String,
    pub status: JobStatus,
    pub lane: String,
    pub model: String,
    pub conversation_id: Option<ConversationId>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempts: i32,
    pub queued_ms: Option<i32>,
    pub ttft_ms: Option<i32>,
    pub upstream_ms: Option<i32>,
    pub reply: Option<ReplyView>,
    pub error: Option<JobErrorView>,
}

/// The reply of a job that succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplyView {
    /// The assistant message in the conversation (none for a stateless chat completion).
    pub message_id: Option<MessageId>,
    /// The model that answered, as the provider named it.
    pub model: Option<String>,
    pub content: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// Served from the reply cache (either tier), not by a provider call of its own.
    pub cached: bool,
    /// Which tier served a cached reply: `exact` or `semantic` (absent when not cached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheTier>,
    /// A chat completion's whole answer, in the OpenAI shape: every choice with its assistant
    /// message (content, tool calls, refusal), finish reason and log probabilities. `content` and
    /// `finish_reason` above are choice 0's. Absent for conversation turns, which are text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
}

/// Why a job ended without a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobErrorView {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

fn unix(at: OffsetDateTime) -> i64 {
    at.unix_timestamp()
}

impl From<JobRow> for JobView {
    fn from(row: JobRow) -> Self {
        let status = row.status();
        let reply = (status == JobStatus::Succeeded).then(|| ReplyView {
            message_id: row.reply_message_id,
            model: row.reply_model,
            content: row.reply_content.unwrap_or_default(),
            finish_reason: row.finish_reason,
            usage: row.usage.and_then(|u| serde_json::from_value(u).ok()),
            cached: row.cached,
            // Rows written before tiers were recorded had only the exact tier.
            cache: row.cached.then(|| {
                row.cache_tier
                    .as_deref()
                    .and_then(CacheTier::parse)
                    .unwrap_or(CacheTier::Exact)
            }),
            choices: row
                .reply_choices
                .and_then(|c| serde_json::from_value(c).ok())
                .unwrap_or_default(),
        });
        let error = matches!(
            status,
            JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired
        )
        .then(|| JobErrorView {
            kind: row.error_type.unwrap_or_else(|| status.as_str().to_owned()),
            message: row.error_message.unwrap_or_default(),
        });
        Self {
            id: row.id,
            object: "job".into(),
            status,
            lane: row.lane,
            model: row.model,
            conversation_id: row.conversation_id,
            created_at: unix(row.created_at),
            started_at: row.started_at.map(unix),
            finished_at: row.finished_at.map(unix),
            attempts: row.attempts,
            queued_ms: row.queued_ms,
            ttft_ms: row.ttft_ms,
            upstream_ms: row.upstream_ms,
            reply,
            error,
        }
    }
}

impl JobView {
    /// A job just recorded and queued, as the request that created it is answered (without
    /// reading it back).
    pub fn queued(
        id: JobId,
        lane: crate::job::Lane,
        model: String,
        conversation_id: Option<ConversationId>,
        created_at: i64,
    ) -> Self {
        Self {
            id,
            object: "job".into(),
            status: JobStatus::Queued,
            lane: lane.as_str().to_owned(),
            model,
            conversation_id,
            created_at,
            started_at: None,
            finished_at: None,
            attempts: 0,
            queued_ms: None,
            ttft_ms: None,
            upstream_ms: None,
            reply: None,
            error: None,
        }
    }
}
