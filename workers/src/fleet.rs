//! The fleet: which workers are alive, so each can take its share of the provider's limits.
//!
//! Every worker puts a heartbeat (a [`WorkerStatus`]) in the NATS KV bucket `<ns>_workers` every
//! `worker_heartbeat_secs`, and the bucket forgets a key three heartbeats after its last put. After
//! each heartbeat the worker lists the live keys: sorted, they give the fleet's size and this
//! worker's place in it ([`Membership`]), from which [`Membership::share`] and
//! [`Membership::integer_share`] divide a fleet-wide limit.
//!
//! Timing: a worker that joins is counted by the others within one heartbeat; one that stops
//! cleanly deletes its key and is uncounted within one heartbeat; one that dies is uncounted
//! within three heartbeats plus one (the key's age limit, then the next listing). Until then
//! shares are computed for the old fleet: right after a join the fleet may briefly run up to
//! `(n+1)/n` of a limit, and right after a death it runs below it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use chatq_common::heartbeat::WorkerStatus;
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The live workers, as this worker last saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Sorted worker ids; always includes this worker.
    pub members: Vec<String>,
    /// This worker's index in `members`.
    pub index: usize,
}

impl Membership {
    /// A fleet of one: this worker alone (before the first listing).
    pub fn alone(id: &str) -> Self {
        Self {
            members: vec![id.to_owned()],
            index: 0,
        }
    }

    fn from_members(mut members: Vec<String>, me: &str) -> Self {
        if !members.iter().any(|m| m == me) {
            members.push(me.to_owned());
        }
        members.sort();
        members.dedup();
        let index = members.iter().position(|m| m == me).unwrap_or(0);
        Self { members, index }
    }

    pub fn size(&self) -> usize {
        self.members.len().max(1)
    }

    /// This worker's share of a divisible limit (a rate).
    pub fn share(&self, total: f64) -> f64 {
        total / self.size() as f64
    }

    /// This worker's share of a whole-number limit (concurrent requests): the remainder goes to
    /// the first workers in id order, so the shares always add up to exactly `total`.
    pub fn integer_share(&self, total: u32) -> u32 {
        let size = u32::try_from(self.size()).unwrap_or(u32::MAX);
        let index = u32::try_from(self.index).unwrap_or(u32::MAX);
        total / size + u32::from(index < total % size)
    }
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`; worker ids are made of a host name and a random suffix.
fn key_for(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// This worker's membership in the fleet.
pub struct Fleet {
    store: kv::Store,
    id: String,
    key: String,
    every: Duration,
    membership: watch::Sender<Membership>,
}

impl Fleet {
    /// Opens the workers bucket ([`chatq_common::topology::Topology::ensure`] creates it).
    ///
    /// # Errors
    /// NATS is unreachable or the bucket is missing.
    pub async fn join(
        jetstream: &async_nats::jetstream::Context,
        bucket: &str,
        id: &str,
        every: Duration,
    ) -> Result<Self, async_nats::jetstream::context::KeyValueError> {
        let store = jetstream.get_key_value(bucket).await?;
        let (membership, _) = watch::channel(Membership::alone(id));
        Ok(Self {
            store,
            id: id.to_owned(),
            key: key_for(id),
            every,
            membership,
        })
    }

    /// Membership updates (the current value at once, then every change).
    pub fn membership(&self) -> watch::Receiver<Membership> {
        self.membership.subscribe()
    }

    /// One heartbeat now: a worker announces itself and learns the fleet before it pulls a job,
    /// so it starts with its share, not with the whole limit.
    pub async fn introduce(&self, status: &WorkerStatus) {
        self.beat(status).await;
    }

    /// Heartbeats until `shutdown`, then removes this worker's key so the others rebalance at once.
    pub async fn run_until_stopped(
        self,
        status: Arc<dyn Fn() -> WorkerStatus + Send + Sync>,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => break,
            }
            self.beat(&status()).await;
        }
        if let Err(err) = self.store.delete(&self.key).await {
            tracing::debug!(error = %err, "could not remove this worker's heartbeat; it will expire");
        }
    }

    async fn beat(&self, status: &WorkerStatus) {
        let Ok(value) = serde_json::to_vec(status) else {
            return;
        };
        if let Err(err) = self.store.put(&self.key, value.into()).await {
            tracing::warn!(error = %err, "could not publish this worker's heartbeat");
            return;
        }
        let keys: Result<Vec<String>, _> = match self.store.keys().await {
            Ok(keys) => keys.try_collect().await,
            Err(err) => {
                tracing::warn!(error = %err, "could not list the fleet");
                return;
            }
        };
        match keys {
            Ok(keys) => {
                let next = Membership::from_members(keys, &self.key);
                self.membership.send_if_modified(|current| {
                    if *current == next {
                        return false;
                    }
                    tracing::info!(workers = next.size(), id = %self.id, "fleet changed; rebalancing provider limits");
                    *current = next;
                    true
                });
            }
            Err(err) => tracing::warn!(error = %err, "could not list the fleet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(members: &[&str], me: &str) -> Membership {
        Membership::from_members(members.iter().map(|m| (*m).to_owned()).collect(), me)
    }

    #[test]
    fn integer_shares_add_up_to_the_total() {
        for size in 1..6 {
            let members: Vec<String> = (0..size).map(|i| format!("w{i}")).collect();
            for total in [0, 1, 2, 7, 10, 64] {
                let sum: u32 = members
                    .iter()
                    .map(|me| Membership::from_members(members.clone(), me).integer_share(total))
                    .sum();
                assert_eq!(sum, total, "size {size}, total {total}");
            }
        }
    }

    #[test]
    fn rate_shares_divide_by_the_fleet_and_this_worker_always_counts() {
        let membership = fleet(&["b", "c"], "a");
        assert_eq!(membership.members, ["a", "b", "c"]);
        assert_eq!(membership.index, 0);
        assert!((membership.share(90.0) - 30.0).abs() < 1e-9);
    }

    #[test]
    fn keys_are_valid_kv_keys() {
        assert_eq!(key_for("host.example:1-ab"), "host_example_1-ab");
    }
}
