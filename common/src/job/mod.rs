//! Jobs on the wire: the envelope published to JetStream, lanes, statuses and the stored request.
//!
//! The envelope is deliberately small. Postgres is the source of truth for everything about a job;
//! the message only says which job to run, so a redelivered or republished message can never carry
//! stale data.

pub mod view;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::chat::{ChatMessage, GenerationParams};
use crate::ids::{ConversationId, JobId};

/// A queue lane. Interactive jobs always go first; batch jobs use the capacity left over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Interactive,
    Batch,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Interactive, Lane::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Batch => "batch",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = UnknownValue;

    fn from_str(text: &str) -> Result<Self, UnknownValue> {
        match text {
            "interactive" => Ok(Lane::Interactive),
            "batch" => Ok(Lane::Batch),
            _ => Err(UnknownValue(text.to_owned())),
        }
    }
}

/// Where a job is in its life. The last four are terminal: a job never leaves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = UnknownValue;

    fn from_str(text: &str) -> Result<Self, UnknownValue> {
        Ok(match text {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "expired" => JobStatus::Expired,
            _ => return Err(UnknownValue(text.to_owned())),
        })
    }
}

/// A stored enum value this build does not know (a newer release wrote it, or the data is bad).
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(pub String);

/// What kind of request a job answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobRequest {
    /// A turn in a conversation: the prompt is the conversation's system prompt and a window of its
    /// history up to and including the user message the job answers.
    ConversationTurn { params: GenerationParams },
    /// A stateless chat completion: the prompt is given whole.
    ChatCompletion {
        /// The model (resolved) and the sampling parameters chatq reads itself (the token limit
        /// and the choice count bound the rate budget).
        params: GenerationParams,
        /// The request as the client sent it (without `stream` and `stream_options`, which are
        /// between the client and chatq), with the model resolved: sent to the provider as is,
        /// so tools, response formats, content parts and every other parameter reach it intact.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<serde_json::Map<String, serde_json::Value>>,
        /// The prompt of a completion recorded before `body` existed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        messages: Vec<ChatMessage>,
    },
}

impl JobRequest {
    pub fn params(&self) -> &GenerationParams {
        match self {
            JobRequest::ConversationTurn { params, .. }
            | JobRequest::ChatCompletion { params, .. } => params,
        }
    }
}

/// The message published to `<namespace>.jobs.<lane>` with `Nats-Msg-Id` set to the job id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnvelope {
    pub job_id: JobId,
    pub lane: Lane,
    /// The conversation of a turn, so a worker can claim it reading only the messages it has not
    /// seen. Absent for other jobs, for copies the reconciler or a retry publish (their worker
    /// reads the whole window), and in envelopes from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
}
