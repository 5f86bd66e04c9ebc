//! Cancelling a running job at its worker.
//!
//! The ingress records the cancel in Postgres, then says so on `<ns>.control.cancel.<job id>`
//! (core NATS). Every worker listens to all of those subjects ([`listen`]) and trips the
//! [`CancelSwitch`] of the job if it holds it, which drops the provider call at once. A notice
//! lost on the way (NATS reconnecting) is not lost for good: the job's next lease renewal reads
//! the cancel from Postgres (see `process.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chatq_common::ids::JobId;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// The cancel switches of the jobs one worker holds, by job id.
#[derive(Debug, Default)]
pub struct CancelSwitches {
    /// A token per job, with how many deliveries of it this worker holds (a duplicate delivery
    /// can arrive while the first still runs).
    held: Mutex<HashMap<JobId, (CancellationToken, usize)>>,
}

impl CancelSwitches {
    /// The switch of a job this worker is about to run. Taken before the claim, so a notice that
    /// arrives once the job is ours is never missed; the job is forgotten when it is dropped.
    pub fn register(self: &Arc<Self>, job: JobId) -> CancelSwitch {
        let token = match self.held.lock() {
            Ok(mut held) => {
                let entry = held
                    .entry(job)
                    .or_insert_with(|| (CancellationToken::new(), 0));
                entry.1 += 1;
                entry.0.clone()
            }
            // A poisoned map only loses the fast path; lease renewals still see the cancel.
            Err(_) => CancellationToken::new(),
        };
        CancelSwitch {
            switches: self.clone(),
            job,
            token,
        }
    }

    /// Trips the switch of `job`. Returns whether this worker holds it.
    pub fn cancel(&self, job: JobId) -> bool {
        let held = self.held.lock().ok();
        match held.as_ref().and_then(|held| held.get(&job)) {
            Some((token, _)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// A job's cancel switch, held while the job runs.
#[derive(Debug)]
pub struct CancelSwitch {
    switches: Arc<CancelSwitches>,
    job: JobId,
    token: CancellationToken,
}

impl CancelSwitch {
    /// Completes when a cancel of the job arrives.
    pub async fn tripped(&self) {
        self.token.cancelled().await;
    }
}

impl Drop for CancelSwitch {
    fn drop(&mut self) {
        if let Ok(mut held) = self.switches.held.lock()
            && let Some(entry) = held.get_mut(&self.job)
        {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                held.remove(&self.job);
            }
        }
    }
}

/// Trips switches as cancel notices arrive on `subscriber` (every `<ns>.control.cancel.*`),
/// until `shutdown`.
pub async fn listen(
    mut subscriber: async_nats::Subscriber,
    switches: Arc<CancelSwitches>,
    shutdown: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            notice = subscriber.next() => notice,
            () = shutdown.cancelled() => break,
        };
        let Some(notice) = notice else { break };
        let job = notice
            .subject
            .rsplit('.')
            .next()
            .and_then(|id| id.parse::<JobId>().ok());
        match job {
            Some(job) if switches.cancel(job) => {
                tracing::info!(%job, "cancel requested: stopping the job");
            }
            Some(_) => {}
            None => {
                tracing::debug!(subject = %notice.subject, "ignoring a malformed cancel notice")
            }
        }
    }
    drop(subscriber.unsubscribe().await);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_switch_trips_only_while_its_job_is_held() {
        let switches = Arc::new(CancelSwitches::default());
        let job = JobId::new();
        assert!(!switches.cancel(job));
        let first = switches.register(job);
        let second = switches.register(job);
        drop(first);
        assert!(switches.cancel(job));
        second.tripped().await;
        drop(second);
        assert!(!switches.cancel(job));
    }
}
