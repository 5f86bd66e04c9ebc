//! Job slots whose number can change while jobs hold them.
//!
//! A worker runs at most `limit` jobs at once. The limit moves: it is the smallest of the
//! configured concurrency, this worker's share of the fleet-wide provider concurrency (which
//! changes as workers join and leave), and the adaptive limit (lowered on provider 429s). A
//! semaphore cannot shrink below what is held, so this counts slots itself: lowering the limit
//! takes effect as jobs finish, and never interrupts one.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Counts {
    limit: usize,
    in_use: usize,
}

/// A resizable set of slots.
#[derive(Debug, Clone)]
pub struct Slots {
    counts: Arc<Mutex<Counts>>,
    freed: Arc<Notify>,
}

/// One held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Slots,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.lock();
        counts.in_use = counts.in_use.saturating_sub(1);
        drop(counts);
        self.slots.freed.notify_waiters();
    }
}

impl Slots {
    pub fn new(limit: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(Counts { limit, in_use: 0 })),
            freed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the limit. Raising it wakes waiters at once; lowering it lets held slots finish.
    pub fn set_limit(&self, limit: usize) {
        self.lock().limit = limit;
        self.freed.notify_waiters();
    }

    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// A slot if one is free now.
    pub fn try_acquire(&self) -> Option<Slot> {
        let mut counts = self.lock();
        if counts.in_use < counts.limit {
            counts.in_use += 1;
            Some(Slot {
                slots: self.clone(),
            })
        } else {
            None
        }
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> Slot {
        loop {
            // Register interest before checking, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire() {
                return slot;
            }
            freed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn slots_are_bounded_and_freed_on_drop() {
        let slots = Slots::new(2);
        let a = slots.try_acquire().unwrap();
        let _b = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none());
        drop(a);
        assert!(slots.try_acquire().is_some());
    }

    #[tokio::test]
    async fn lowering_the_limit_waits_for_holders_and_raising_wakes_waiters() {
        let slots = Slots::new(2);
        let a = slots.try_acquire().unwrap();
        let b = slots.try_acquire().unwrap();
        slots.set_limit(1);
        drop(a);
        assert!(
            slots.try_acquire().is_none(),
            "one slot is still held and the limit is 1"
        );
        drop(b);
        let c = slots.try_acquire().unwrap();

        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        slots.set_limit(2);
        let d = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(slots.in_use(), 2);
        drop((c, d));
        assert_eq!(slots.in_use(), 0);
    }
}
