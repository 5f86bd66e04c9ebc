//! Interactive calls first, at the provider limit too.
//!
//! A worker runs up to `worker_concurrency` jobs at once, and under a provider limit every one of
//! them waits for its turn. The queue already hands interactive jobs out first, but once a
//! worker's slots are full of batch lines waiting for turns, an interactive job that joins them
//! waits behind the crowd: with a 100,000-line batch at a 100/s limit, chat completions whose
//! provider answered in 50 ms took 420 ms at the median and 3.7 s at p99, all of it spent here.
//! So batch calls wait for their turn one at a time, and only while no interactive call waits:
//! an interactive call competes with at most one batch call for the next turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use chatq_common::job::Lane;
use tokio::sync::{Mutex, MutexGuard, Notify};

/// Who waits for a turn, by lane.
#[derive(Debug, Default)]
pub(super) struct LanePriority {
    interactive_waiting: AtomicUsize,
    /// Notified when the last interactive call waiting has its turn.
    no_interactive_waiting: Notify,
    /// Held by the one batch call that waits for a turn.
    batch_turn: Mutex<()>,
}

/// A call's place while it waits for its turn; dropped once it has it.
pub(super) enum Waiting<'a> {
    Interactive(&'a LanePriority),
    /// Holds the batch lane's one place in line until dropped.
    Batch { _turn: MutexGuard<'a, ()> },
}

impl LanePriority {
    /// Waits until a call of `lane` may wait for a turn: an interactive call at once, a batch call
    /// once no other batch call and no interactive call is waiting.
    pub(super) async fn wait_in_line(&self, lane: Lane) -> Waiting<'_> {
        match lane {
            Lane::Interactive => {
                self.interactive_waiting.fetch_add(1, Ordering::SeqCst);
                Waiting::Interactive(self)
            }
            Lane::Batch => {
                let turn = self.batch_turn.lock().await;
                loop {
                    let quiet = self.no_interactive_waiting.notified();
                    tokio::pin!(quiet);
                    // Registered before the count is read, so a notification between the two is
                    // not lost.
                    quiet.as_mut().enable();
                    if self.interactive_waiting.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    quiet.await;
                }
                Waiting::Batch { _turn: turn }
            }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Waiting::Interactive(priority) = self
            && priority.interactive_waiting.fetch_sub(1, Ordering::SeqCst) == 1
        {
            priority.no_interactive_waiting.notify_waiters();
        }
    }
}
