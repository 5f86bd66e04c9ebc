//! What a pull request to JetStream yields, as the worker's loop reads it: its deliveries, each
//! with the consumer it came from, then its end (and whether it got every job it asked for), with
//! a bound on how long the loop waits for the next answer.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::Batch;
use futures::StreamExt;
use futures::stream::BoxStream;

/// Longest wait for the next answer to a pull request. The server answers a fetch at once and a
/// long poll within [`super::pull::IDLE_POLL`]; an answer lost while NATS restarts would otherwise keep the
/// loop waiting forever (a fetch has no expiry of its own). Anything delivered after the loop
/// gave up is redelivered after its ack wait.
pub(super) const PULL_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What one pull request yields: its deliveries, then its end.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every answer is a delivery: boxing it would allocate once per job to shrink the end"
)]
pub(super) enum Answer {
    Delivered {
        consumer: usize,
        message: Result<async_nats::jetstream::Message, async_nats::Error>,
    },
    /// The request to consumer `consumer` has ended; `filled` when it delivered every job it
    /// asked for.
    Ended { consumer: usize, filled: bool },
}

pub(super) type Answers = BoxStream<'static, Answer>;

/// The answers of a pull request to consumer `consumer` for `asked` jobs.
pub(super) fn answers_of(consumer: usize, asked: usize, messages: Batch) -> Answers {
    futures::stream::unfold(Some((messages, 0)), move |request| async move {
        let (mut messages, delivered) = request?;
        match messages.next().await {
            Some(Ok(message)) => Some((
                Answer::Delivered {
                    consumer,
                    message: Ok(message),
                },
                Some((messages, delivered + 1)),
            )),
            Some(Err(err)) => Some((
                Answer::Delivered {
                    consumer,
                    message: Err(err),
                },
                Some((messages, delivered)),
            )),
            None => Some((
                Answer::Ended {
                    consumer,
                    filled: delivered >= asked,
                },
                None,
            )),
        }
    })
    .boxed()
}

/// The next answer to a pull request; `None` once it has ended, when nothing came for
/// [`PULL_ANSWER_TIMEOUT`], or, for a long poll, once it has `expired`.
pub(super) async fn next_answer<S: futures::Stream + Unpin>(
    messages: &mut S,
    expired: Option<tokio::time::Instant>,
) -> Option<S::Item> {
    let answer_by = tokio::time::Instant::now() + PULL_ANSWER_TIMEOUT;
    let answer_by = expired.map_or(answer_by, |expired| expired.min(answer_by));
    tokio::time::timeout_at(answer_by, messages.next())
        .await
        .unwrap_or_else(|_| {
            tracing::debug!("a pull request went unanswered; pulling again");
            None
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::pull::{IDLE_POLL, LONG_POLL_GRACE};

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_the_server_never_ends_is_given_up_at_its_expiry() {
        let started = tokio::time::Instant::now();
        let expired = started + IDLE_POLL + LONG_POLL_GRACE;
        let mut silent = futures::stream::pending::<()>();
        assert_eq!(next_answer(&mut silent, Some(expired)).await, None);
        assert_eq!(started.elapsed(), IDLE_POLL + LONG_POLL_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_that_goes_unanswered_is_given_up() {
        let started = tokio::time::Instant::now();
        let mut silent = futures::stream::pending::<()>();
        assert_eq!(next_answer(&mut silent, None).await, None);
        assert_eq!(started.elapsed(), PULL_ANSWER_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_are_read_until_the_request_ends() {
        let expired = tokio::time::Instant::now() + IDLE_POLL;
        let mut two = futures::stream::iter([1, 2]);
        assert_eq!(next_answer(&mut two, Some(expired)).await, Some(1));
        assert_eq!(next_answer(&mut two, Some(expired)).await, Some(2));
        assert_eq!(next_answer(&mut two, Some(expired)).await, None);
    }
}
