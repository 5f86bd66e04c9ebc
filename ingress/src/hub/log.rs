//! A job's event log in one ingress process, and the cursors clients read it with.

use std::sync::{Arc, RwLock};

use chatq_common::events::EventBody;
use tokio::sync::watch;

use super::JobHub;

/// One event as clients receive it: typed, and its `data` serialised once for every SSE client.
#[derive(Debug)]
pub struct HubEvent {
    pub id: u64,
    pub body: EventBody,
    /// `body`'s data as JSON text.
    pub data: String,
}

impl HubEvent {
    pub fn new(id: u64, body: EventBody) -> Self {
        let data = body.data_json();
        Self { id, body, data }
    }
}

/// Log length and whether the job has ended, broadcast to cursors.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Progress {
    events: usize,
    ended: bool,
}

/// A job's events in id order, appended by its pump and read by any number of cursors.
pub(super) struct Log {
    events: RwLock<Vec<Arc<HubEvent>>>,
    progress: watch::Sender<Progress>,
}

impl Log {
    pub(super) fn new() -> Self {
        let (progress, _) = watch::channel(Progress::default());
        Self {
            events: RwLock::new(Vec::new()),
            progress,
        }
    }

    pub(super) fn last_id(&self) -> Option<u64> {
        self.events.read().ok()?.last().map(|e| e.id)
    }

    /// Appends an event if it comes after everything logged; returns whether it did.
    pub(super) fn append(&self, event: HubEvent) -> bool {
        let Ok(mut events) = self.events.write() else {
            return false;
        };
        if events.last().is_some_and(|last| last.id >= event.id) {
            return false;
        }
        let ended = event.body.is_terminal();
        events.push(Arc::new(event));
        let len = events.len();
        drop(events);
        self.progress.send_modify(|p| {
            p.events = len;
            p.ended |= ended;
        });
        true
    }

    pub(super) fn ended(&self) -> bool {
        self.progress.borrow().ended
    }

    fn get(&self, index: usize) -> Option<Arc<HubEvent>> {
        self.events.read().ok()?.get(index).cloned()
    }

    /// Index of the first event with an id above `after`.
    fn position_after(&self, after: u64) -> usize {
        self.events
            .read()
            .map(|events| events.partition_point(|e| e.id <= after))
            .unwrap_or(0)
    }
}

/// One client's position in a job's log.
pub struct HubCursor {
    hub: Arc<JobHub>,
    next: usize,
    progress: watch::Receiver<Progress>,
}

impl HubCursor {
    pub(super) fn new(hub: Arc<JobHub>) -> Self {
        let progress = hub.log.progress.subscribe();
        Self {
            hub,
            next: 0,
            progress,
        }
    }

    /// Skips every event up to and including `after` (a `Last-Event-ID`), now and as they
    /// arrive; `None` skips nothing.
    pub fn resume(mut self, after: Option<u64>) -> ResumingCursor {
        if let Some(id) = after {
            self.next = self.hub.log.position_after(id);
        }
        ResumingCursor {
            cursor: self,
            after,
        }
    }

    /// The next event, waiting for it if needed; `None` once the job has ended and every event
    /// was read.
    pub async fn next(&mut self) -> Option<Arc<HubEvent>> {
        loop {
            let progress = *self.progress.borrow_and_update();
            if self.next < progress.events {
                let event = self.hub.log.get(self.next)?;
                self.next += 1;
                return Some(event);
            }
            if progress.ended {
                return None;
            }
            if self.progress.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// A cursor that never yields an event with an id at or below `after`.
pub struct ResumingCursor {
    cursor: HubCursor,
    after: Option<u64>,
}

impl ResumingCursor {
    pub async fn next(&mut self) -> Option<Arc<HubEvent>> {
        loop {
            let event = self.cursor.next().await?;
            if self.after.is_none_or(|after| event.id > after) {
                return Some(event);
            }
        }
    }
}
