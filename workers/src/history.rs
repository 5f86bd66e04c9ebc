//! The prompt windows of conversations this worker answered lately, kept between turns.
//!
//! A conversation's next turn needs the same window moved on by the messages written since: the
//! reply to the last turn and the new question. So the worker names, with each claim, the
//! sequence number up to which it holds the window (`known_seq`), the claim reads only newer
//! messages, and the two are joined here. What bounds the window still holds: the newest
//! `history_max_messages` are kept, and the estimated tokens are trimmed when the prompt is built.
//!
//! A window is valid as long as the messages it holds are still stored. Messages are only
//! appended, and sequence numbers only grow, so the one change that can take them away is a
//! cleared history (a deleted conversation takes its jobs with it): then the conversation's
//! oldest message, which the claim reads, is newer than the oldest one kept, and the kept ones
//! are dropped. Sequence numbers keep growing past a clear, so the messages read are then the
//! whole window.

use std::sync::Arc;

use chatq_common::chat::ChatMessage;
use chatq_common::db::jobs::ClaimedJob;
use chatq_common::ids::ConversationId;
use chatq_common::metrics as names;

use crate::memory;

/// A window: the newest messages of a conversation up to `last_seq`, oldest first, with their
/// sequence numbers, without gaps.
pub type Window = Arc<[(i64, ChatMessage)]>;

#[derive(Clone)]
pub struct HistoryWindows {
    windows: Option<moka::future::Cache<ConversationId, Window>>,
    max_messages: usize,
}

impl HistoryWindows {
    /// Keeps windows of `max_messages` in up to `max_bytes` of memory (`0`: keeps nothing, every
    /// turn reads its whole window).
    pub fn new(max_bytes: u64, max_messages: usize) -> Self {
        let windows = (max_bytes > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &ConversationId, window: &Window| memory::weight(held_bytes(window)))
                .build()
        });
        Self {
            windows,
            max_messages,
        }
    }

    /// Applies the evictions the cache keeps pending (moka applies them a few at a time, as it is
    /// used), so that what it holds is within its bound.
    pub async fn settle(&self) {
        if let Some(windows) = &self.windows {
            windows.run_pending_tasks().await;
        }
    }

    /// Most messages in a window (`history_max_messages`).
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }

    /// The window held for `conversation`, to name its last sequence number in the claim and to
    /// join with what the claim reads. Taken before the claim: a window evicted meanwhile is
    /// still the one the claim's read continues.
    pub async fn held(&self, conversation: Option<ConversationId>) -> Option<Window> {
        self.windows.as_ref()?.get(&conversation?).await
    }

    /// The sequence number up to which `held` covers the conversation (0: nothing held).
    pub fn known_seq(held: Option<&Window>) -> i64 {
        held.and_then(|window| window.last())
            .map_or(0, |(seq, _)| *seq)
    }

    /// Joins what the claim read (`job.history`, the messages after `held`) onto `held`, keeps
    /// the newest `max_messages`, puts the result back in `job.history`, and keeps it for the
    /// conversation's next turn.
    pub async fn complete(&self, job: &mut ClaimedJob, held: Option<Window>) {
        let (Some(conversation), Some(user_seq)) = (job.conversation_id, job.user_seq) else {
            return;
        };
        let read = std::mem::take(&mut job.history);
        let kept: Vec<(i64, ChatMessage)> = match held {
            // Still stored: the conversation's oldest message is not newer than the oldest kept.
            Some(held)
                if job.first_seq.is_some_and(|first| {
                    held.first().is_some_and(|(oldest, _)| first <= *oldest)
                }) =>
            {
                // Up to the message answered: a redelivered older turn may find newer ones held.
                held.iter()
                    .filter(|(seq, _)| *seq <= user_seq)
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        };
        metrics::counter!(names::HISTORY_MESSAGES, "source" => "postgres")
            .increment(read.len() as u64);
        metrics::counter!(names::HISTORY_MESSAGES, "source" => "memory")
            .increment(kept.len() as u64);
        let mut window = kept;
        window.extend(read);
        let extra = window.len().saturating_sub(self.max_messages);
        window.drain(..extra);
        if let Some(windows) = &self.windows
            && !window.is_empty()
        {
            windows.insert(conversation, window.clone().into()).await;
        }
        job.history = window;
    }
}

/// The memory a window kept takes: its messages behind the `Arc`, their text and the cache's
/// entry.
fn held_bytes(window: &Window) -> usize {
    memory::CACHE_ENTRY
        + memory::arc_slice::<(i64, ChatMessage)>(window.len())
        + window
            .iter()
            .map(|(_, message)| memory::string(&message.content))
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use chatq_common::chat::Role;

    use super::*;

    fn job(conversation: ConversationId, user_seq: i64, first_seq: Option<i64>) -> ClaimedJob {
        ClaimedJob {
            id: chatq_common::ids::JobId::new(),
            tenant_id: chatq_common::ids::TenantId::new(),
            conversation_id: Some(conversation),
            lane: "interactive".into(),
            request: serde_json::Value::Null,
            model: "m".into(),
            attempts: 1,
            earlier_attempts: 0,
            publication: 0,
            deadline_at: time::OffsetDateTime::now_utc(),
            created_at: time::OffsetDateTime::now_utc(),
            system_prompt: None,
            user_seq: Some(user_seq),
            history: Vec::new(),
            first_seq,
        }
    }

    fn messages(seqs: std::ops::RangeInclusive<i64>) -> Vec<(i64, ChatMessage)> {
        seqs.map(|seq| (seq, ChatMessage::new(Role::User, seq.to_string())))
            .collect()
    }

    fn seqs(job: &ClaimedJob) -> Vec<i64> {
        job.history.iter().map(|(seq, _)| *seq).collect()
    }

    #[tokio::test]
    async fn the_next_turn_joins_what_is_new_onto_what_was_kept() {
        let windows = HistoryWindows::new(1 << 20, 4);
        let conversation = ConversationId::new();
        let mut first = job(conversation, 3, None);
        first.history = messages(1..=3);
        windows.complete(&mut first, None).await;
        assert_eq!(seqs(&first), [1, 2, 3]);

        let held = windows.held(Some(conversation)).await;
        assert_eq!(HistoryWindows::known_seq(held.as_ref()), 3);
        let mut next = job(conversation, 5, Some(1));
        next.history = messages(4..=5);
        windows.complete(&mut next, held).await;
        assert_eq!(seqs(&next), [2, 3, 4, 5], "the newest max_messages");
    }

    #[tokio::test]
    async fn a_cleared_history_drops_what_was_kept() {
        let windows = HistoryWindows::new(1 << 20, 4);
        let conversation = ConversationId::new();
        let mut first = job(conversation, 3, None);
        first.history = messages(1..=3);
        windows.complete(&mut first, None).await;

        let held = windows.held(Some(conversation)).await;
        // Cleared: the oldest message now is 7, newer than the oldest kept.
        let mut next = job(conversation, 7, Some(7));
        next.history = messages(7..=7);
        windows.complete(&mut next, held).await;
        assert_eq!(seqs(&next), [7]);
    }

    #[tokio::test]
    async fn an_older_turn_delivered_again_gets_its_own_window() {
        let windows = HistoryWindows::new(1 << 20, 10);
        let conversation = ConversationId::new();
        let mut first = job(conversation, 5, None);
        first.history = messages(1..=5);
        windows.complete(&mut first, None).await;

        let held = windows.held(Some(conversation)).await;
        let mut again = job(conversation, 3, Some(1));
        windows.complete(&mut again, held).await;
        assert_eq!(seqs(&again), [1, 2, 3]);
    }

    #[tokio::test]
    async fn nothing_is_kept_at_zero_bytes() {
        let windows = HistoryWindows::new(0, 10);
        let conversation = ConversationId::new();
        let mut first = job(conversation, 2, None);
        first.history = messages(1..=2);
        windows.complete(&mut first, None).await;
        assert_eq!(seqs(&first), [1, 2]);
        assert!(windows.held(Some(conversation)).await.is_none());
    }
}
