//! Pulling jobs into free slots, interactive lane first: the pull requests a worker keeps open,
//! and which slot each delivered job takes (it then runs in [`super::settle`]).

use std::time::Duration;

use chatq_common::job::Lane;
use futures::stream::SelectAll;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Worker;
use super::answers::{Answer, Answers, answers_of, next_answer};
use super::settle::{hand_back_surplus, run_job};
use crate::slots::{Slot, Slots};

/// How long an idle worker waits on one pull request before looking at both lanes again.
pub(super) const IDLE_POLL: Duration = Duration::from_millis(500);
/// How long after its expiry a long poll is still read. The server ends a long poll with a
/// timeout status when it expires, but not always: one that delivered a message just before
/// expiring may end without a word (seen with nats-server 2.9), and waiting for that word held
/// every job published meanwhile for [`super::answers::PULL_ANSWER_TIMEOUT`]. Nothing is delivered on an expired
/// request, so after this grace the loop pulls again. The grace only has to cover the request's
/// way to the server (its expiry runs from when the server has it); every job published during
/// the grace waits for it, so it is short: at 250 ms, the slowest 1 % of interactive jobs on an
/// idle queue waited 150–250 ms in `chatq-bench fairness` (BENCHMARKS.md, "A slot kept for the
/// front").
pub(super) const LONG_POLL_GRACE: Duration = Duration::from_millis(50);
/// Most jobs asked for in one pull request.
pub(super) const MAX_PULL: usize = 256;

/// How long a worker whose only free slots are those kept for the front waits on the front
/// before it looks again: a slot that frees meanwhile waits at most this long for a job from
/// the overflow or the batch lane.
const RESERVED_POLL: Duration = Duration::from_millis(20);
/// A long poll's request filled this close to the poll's end is not followed by another: the
/// jobs published meanwhile wait at most this long for the next pull.
const MIN_FOLLOW_UP: Duration = Duration::from_millis(5);
/// Index in `Worker::consumers` of the interactive lane's front (`Topology::lane_consumer_names`
/// lists it first).
const FRONT: usize = 0;

/// Of a worker's `limit` slots, how many only the front of the interactive lane may fill: an
/// eighth (none below eight slots). A tenant over its fair share waits in the overflow, and a
/// batch in its lane; either could otherwise take every slot, and a job at the front would wait
/// for one of them to finish. With these kept, it starts at once (README "Fair sharing").
pub(super) fn reserved_for_front(limit: usize) -> usize {
    limit / 8
}

impl Worker {
    /// Fills free slots: interactive jobs first (the front, then the overflow of tenants over
    /// their fair share), then batch, leaving `reserved` slots to the front; if nothing came,
    /// waits a little on the interactive lane's consumers that have room.
    pub(super) async fn pull_into(
        &self,
        free: &mut Vec<Slot>,
        reserved: usize,
        jobs: &TaskTracker,
        hand_back: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let run = Dispatch {
            jobs,
            hand_back,
            shutdown,
            reserved,
        };
        let mut started = 0;
        for (index, (_, consumer)) in self.consumers.iter().enumerate() {
            let room = room_for(index, free.len(), reserved);
            if room == 0 {
                continue;
            }
            let messages = consumer.fetch().max_messages(room).messages().await?;
            let mut answers = SelectAll::new();
            answers.push(answers_of(index, room, messages));
            started += self.dispatch(answers, None, free, &run).await;
        }
        if started == 0 && !free.is_empty() {
            // Both of the interactive lane's consumers, so a job queued behind other tenants'
            // does not wait out the poll while slots are free. Together they may deliver more
            // than there are free slots; the rest is handed back at once (see `dispatch`). When
            // only the front may fill the free slots, the poll is short, so slots that free
            // meanwhile go to the overflow and the batch lane soon, and asks for one job: it
            // ends as that job comes, never in the silence a poll that delivered just before its
            // expiry may end in (see `LONG_POLL_GRACE`), which is common at fifty polls a
            // second; the loop then pulls again at once.
            let only_front = room_for(FRONT + 1, free.len(), reserved) == 0;
            let wait = if only_front { RESERVED_POLL } else { IDLE_POLL };
            let poll = LongPoll {
                due: tokio::time::Instant::now() + wait,
                only_front,
            };
            let mut answers = SelectAll::new();
            for index in self.interactive() {
                if let Some(request) = self.long_poll(index, free, &poll, reserved).await? {
                    answers.push(request);
                }
            }
            self.dispatch(answers, Some(&poll), free, &run).await;
        }
        Ok(())
    }

    /// Indexes in `self.consumers` of the interactive lane's consumers.
    fn interactive(&self) -> impl Iterator<Item = usize> + '_ {
        self.consumers
            .iter()
            .enumerate()
            .filter(|(_, (lane, _))| *lane == Lane::Interactive)
            .map(|(index, _)| index)
    }

    /// A pull request to consumer `index` that waits for jobs until `poll` is due, for as many
    /// as the free slots it may fill (all but `reserved` of them, unless it is the front);
    /// `None` when it may fill none.
    async fn long_poll(
        &self,
        index: usize,
        free: &[Slot],
        poll: &LongPoll,
        reserved: usize,
    ) -> anyhow::Result<Option<Answers>> {
        let room = match room_for(index, free.len(), reserved) {
            0 => return Ok(None),
            _ if poll.only_front => 1,
            room => room,
        };
        let wait = poll
            .due
            .saturating_duration_since(tokio::time::Instant::now());
        let messages = self.consumers[index]
            .1
            .batch()
            .max_messages(room)
            .expires(wait)
            .messages()
            .await?;
        Ok(Some(answers_of(index, room, messages)))
    }

    /// Starts a job for each message, each holding one slot, until the pull requests end (or,
    /// for a long poll, it is past due by [`LONG_POLL_GRACE`]). Returns how many started.
    ///
    /// A long poll's request that got every job it asked for is followed by another to the same
    /// consumer, as soon as a slot is free for it, until the poll is due. The jobs published
    /// meanwhile would otherwise wait for the other consumer's request to expire, with slots
    /// free: at 500 completions a second, the front's request filled in about 400 ms, and one
    /// job in ten then waited 190 ms or more before a worker saw it. A request is never left
    /// behind before its expiry: the server would still deliver to it, and those jobs would
    /// wait out their ack wait.
    async fn dispatch(
        &self,
        mut answers: SelectAll<Answers>,
        poll: Option<&LongPoll>,
        free: &mut Vec<Slot>,
        run: &Dispatch<'_>,
    ) -> usize {
        let expired = poll.map(|poll| poll.due + LONG_POLL_GRACE);
        // Consumers whose request was filled, to pull from again once a slot is free.
        let mut filled = Vec::new();
        let mut started = 0;
        loop {
            let next = tokio::select! {
                next = next_answer(&mut answers, expired) => next,
                slot = self.limits.slots().acquire(), if !filled.is_empty() => {
                    free.push(slot);
                    if let Some(poll) = poll {
                        self.follow_up(&mut filled, poll, free, &mut answers, run.reserved)
                            .await;
                    }
                    continue;
                }
                // A long poll is cut short by shutdown; anything it would still deliver is
                // redelivered after its ack wait.
                () = run.shutdown.cancelled() => None,
            };
            let (consumer, message) = match next {
                Some(Answer::Delivered {
                    consumer,
                    message: Ok(message),
                }) => (consumer, message),
                // A pull request ends after its first error; with two polls together, the other
                // goes on to its own end.
                Some(Answer::Delivered {
                    message: Err(err), ..
                }) => {
                    tracing::debug!(error = %err, "pull request ended");
                    continue;
                }
                Some(Answer::Ended {
                    consumer,
                    filled: true,
                }) => {
                    if let Some(poll) = poll {
                        filled.push(consumer);
                        self.follow_up(&mut filled, poll, free, &mut answers, run.reserved)
                            .await;
                    }
                    continue;
                }
                Some(Answer::Ended { filled: false, .. }) => continue,
                None => break,
            };
            let Some(slot) = self.slot_for(consumer, free, run.reserved) else {
                // More than there are free slots (the two interactive polls together, with no
                // job ended since). Not an attempt: the job was not claimed. Handed back for once
                // the polls have expired: handed back at once, JetStream offers it straight to
                // the polls still open, each offer counting towards `max_deliver`, until it is
                // used up unrun.
                let not_before = expired.map_or(IDLE_POLL, |expired| {
                    expired.saturating_duration_since(tokio::time::Instant::now())
                });
                hand_back_surplus(&self.ctx, message, not_before).await;
                continue;
            };
            started += 1;
            run.jobs.spawn(run_job(
                self.ctx.clone(),
                message,
                slot,
                run.hand_back.clone(),
                self.processed.clone(),
            ));
        }
        started
    }

    /// Pulls again from each `filled` consumer that has room now, with the slots freed since
    /// `free` was filled, unless `poll` is nearly due.
    async fn follow_up(
        &self,
        filled: &mut Vec<usize>,
        poll: &LongPoll,
        free: &mut Vec<Slot>,
        answers: &mut SelectAll<Answers>,
        reserved: usize,
    ) {
        if poll.due <= tokio::time::Instant::now() + MIN_FOLLOW_UP {
            filled.clear();
            return;
        }
        self.top_up(free);
        let mut waiting = Vec::new();
        for consumer in filled.drain(..) {
            match self.long_poll(consumer, free, poll, reserved).await {
                Ok(Some(request)) => answers.push(request),
                Ok(None) => waiting.push(consumer),
                Err(err) => tracing::debug!(error = %err, "cannot pull again"),
            }
        }
        *filled = waiting;
    }

    /// A slot for a job delivered by consumer `consumer`: one of `free`, or one freed since
    /// `free` was filled, but never one of the last `reserved` for a consumer other than the
    /// front. Several requests together may deliver more jobs than `free` held when they were
    /// made; the jobs that ended meanwhile make room for the rest.
    fn slot_for(&self, consumer: usize, free: &mut Vec<Slot>, reserved: usize) -> Option<Slot> {
        let kept = if consumer == FRONT { 0 } else { reserved };
        if free.len() <= kept {
            self.top_up(free);
        }
        (free.len() > kept).then(|| free.pop()).flatten()
    }

    /// Adds the slots freed since `free` was filled.
    fn top_up(&self, free: &mut Vec<Slot>) {
        let slots = self.limits.slots();
        while free.len() < MAX_PULL {
            match slots.try_acquire() {
                Some(slot) => free.push(slot),
                None => break,
            }
        }
    }
}

/// How many of `free` slots a pull request to consumer `index` may fill: all for the front, all
/// but those `reserved` for it otherwise.
fn room_for(index: usize, free: usize, reserved: usize) -> usize {
    if index == FRONT {
        free
    } else {
        free.saturating_sub(reserved)
    }
}

/// Where a dispatch starts jobs.
struct Dispatch<'a> {
    jobs: &'a TaskTracker,
    hand_back: &'a CancellationToken,
    shutdown: &'a CancellationToken,
    /// Free slots only the front may fill.
    reserved: usize,
}

/// A wait on the interactive lane's consumers, until `due`.
struct LongPoll {
    due: tokio::time::Instant,
    /// Only the front may fill the free slots: its requests ask for one job each.
    only_front: bool,
}

pub(super) async fn acquire(slots: &Slots, shutdown: &CancellationToken) -> Option<Slot> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        slot = slots.acquire() => Some(slot),
    }
}
