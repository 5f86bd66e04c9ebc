//! The fleet: which workers are alive, and the capacity leases each holds.
//!
//! Every worker puts a heartbeat (a [`WorkerStatus`]) in the NATS KV bucket `<ns>_workers` every
//! `worker_heartbeat_secs`, and the bucket forgets a key three heartbeats after its last put. After
//! each heartbeat the worker lists the live keys: sorted, they give the fleet's size and this
//! worker's place in it ([`Membership`]). Then it runs a round of its capacity leases
//! ([`crate::leases`]): the membership says how much it should aim to hold, and what it holds
//! (not the membership) says what it may use, as a [`Grant`].
//!
//! Timing: a worker that joins is counted by the others within one heartbeat, and holds its share
//! once they have given back theirs (a heartbeat later); one that stops cleanly gives its leases
//! back and deletes its key, and the others take over within a heartbeat; one that dies, or is
//! paused, keeps its leases until they expire (three heartbeats after its last renewal), so until
//! then its capacity goes unused, never used twice; the others drop it from the fleet a heartbeat
//! after its key expires, once two listings in a row have missed it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use chatq_common::heartbeat::WorkerStatus;
use chatq_common::settings::LimitSettings;
use chatq_common::topology::Topology;
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leases::{Grant, Leases};
use crate::slots::Slots;

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

/// This worker's membership in the fleet, and its leases.
pub struct Fleet {
    store: kv::Store,
    id: String,
    key: String,
    every: Duration,
    membership: watch::Sender<Membership>,
    leases: Leases,
    grants: watch::Sender<Grant>,
    /// This worker's job slots: how many jobs it runs decides which concurrency leases it can
    /// give back.
    slots: Slots,
    /// When a heartbeat or a listing of the fleet last failed.
    last_failure: Option<Instant>,
    /// Workers of the fleet as last seen that the last listing did not name.
    missing: Missing,
}

/// Workers a listing did not name, kept in the fleet until a second listing in a row confirms
/// they are gone: a single listing that misses a live worker's key (a replica of the bucket that
/// has not caught up after a leader change, a key that expired while NATS could take nobody's
/// heartbeats) must not halve anyone's share for a heartbeat. A worker that died is dropped one
/// heartbeat later than its key expires.
#[derive(Debug, Default)]
struct Missing {
    last_time: HashSet<String>,
}

impl Missing {
    /// Of the workers seen before (`previous`) that this listing (`listed`) lacks, those to keep
    /// in the fleet: all of them while `recovering` from a failed heartbeat, otherwise those that
    /// the previous listing did not miss as well.
    fn keep(&mut self, previous: &[String], listed: &[String], recovering: bool) -> Vec<String> {
        let missing: HashSet<String> = previous
            .iter()
            .filter(|member| !listed.contains(member))
            .cloned()
            .collect();
        let kept = missing
            .iter()
            .filter(|member| recovering || !self.last_time.contains(*member))
            .cloned()
            .collect();
        self.last_time = missing;
        kept
    }
}

impl Fleet {
    /// Opens the workers and leases buckets ([`Topology::ensure`] creates them).
    ///
    /// # Errors
    /// NATS is unreachable or a bucket is missing.
    pub async fn join(
        jetstream: &async_nats::jetstream::Context,
        topology: &Topology,
        id: &str,
        limits: &LimitSettings,
        slots: Slots,
    ) -> Result<Self, async_nats::jetstream::context::KeyValueError> {
        let store = jetstream.get_key_value(topology.workers_bucket()).await?;
        let leases = Leases::new(
            jetstream.get_key_value(topology.leases_bucket()).await?,
            id,
            topology.lease_ttl(),
            limits.provider_rpm.is_some() || limits.provider_tpm.is_some(),
            limits.provider_max_concurrency,
        );
        let first = if leases.needed() {
            Grant::nothing(limits.provider_max_concurrency.is_some())
        } else {
            Grant::unlimited()
        };
        Ok(Self {
            store,
            id: id.to_owned(),
            key: key_for(id),
            every: topology.heartbeat(),
            membership: watch::channel(Membership::alone(id)).0,
            leases,
            grants: watch::channel(first).0,
            slots,
            last_failure: None,
            missing: Missing::default(),
        })
    }

    /// Membership updates (the current value at once, then every change).
    pub fn membership(&self) -> watch::Receiver<Membership> {
        self.membership.subscribe()
    }

    /// What this worker may use, after every lease round.
    pub fn grants(&self) -> watch::Receiver<Grant> {
        self.grants.subscribe()
    }

    /// One heartbeat and lease round now: a worker announces itself, learns the fleet and takes
    /// what capacity is free before it pulls a job.
    pub async fn introduce(&mut self, status: &WorkerStatus) {
        self.beat(status).await;
        self.hold().await;
    }

    /// Heartbeats and lease rounds until `shutdown`; then gives the leases back and removes this
    /// worker's key, so the others take over at once.
    pub async fn run_until_stopped(
        mut self,
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
            self.hold().await;
        }
        self.leases.release_all().await;
        self.grants.send_replace(Grant::nothing(false));
        if let Err(err) = self.store.delete(&self.key).await {
            tracing::debug!(error = %err, "could not remove this worker's heartbeat; it will expire");
        }
    }

    /// A lease round for the fleet as last seen.
    async fn hold(&mut self) {
        let membership = self.membership.borrow().clone();
        let grant = self.leases.round(&membership, self.slots.in_use()).await;
        self.grants.send_if_modified(|current| {
            if *current == grant {
                return false;
            }
            if current.rate_units != grant.rate_units || current.concurrency != grant.concurrency {
                tracing::info!(
                    rate_units = grant.rate_units,
                    concurrency = ?grant.concurrency,
                    id = %self.id,
                    "capacity held changed"
                );
            }
            *current = grant;
            true
        });
    }

    /// A heartbeat and a new look at the fleet. A heartbeat or a listing that fails (NATS
    /// unreachable, a JetStream leader election under way) or does not answer within a heartbeat
    /// changes nothing: the fleet stays as last seen, so no worker's share moves because NATS
    /// hiccuped, and the next heartbeat tries again. (A worker whose heartbeats keep failing for
    /// three heartbeats drops out of the others' view; its leases, not the view, bound what it
    /// sends meanwhile.)
    ///
    /// For the same reason, for three heartbeats after one failed, a listing may add workers but
    /// not drop any: while NATS could not take this worker's heartbeats (a JetStream cluster
    /// electing leaders can take ten seconds and more), it could not take the others' either, and
    /// their keys may have expired although they are alive. Within three heartbeats they are
    /// listed again; one that really died is dropped then. Outside that window, a worker is dropped
    /// only once two listings in a row have missed it ([`Missing`]).
    async fn beat(&mut self, status: &WorkerStatus) {
        if tokio::time::timeout(self.every, self.beat_once(status))
            .await
            .is_err()
        {
            self.last_failure = Some(Instant::now());
            tracing::warn!(
                "the heartbeat took longer than a heartbeat; keeping the fleet as last seen"
            );
        }
    }

    async fn beat_once(&mut self, status: &WorkerStatus) {
        let Ok(value) = serde_json::to_vec(status) else {
            return;
        };
        if let Err(err) = self.store.put(&self.key, value.into()).await {
            self.last_failure = Some(Instant::now());
            tracing::warn!(error = %err, "could not publish this worker's heartbeat");
            return;
        }
        let keys: Result<Vec<String>, _> = match self.store.keys().await {
            Ok(keys) => keys.try_collect().await,
            Err(err) => {
                self.last_failure = Some(Instant::now());
                tracing::warn!(error = %err, "could not list the fleet");
                return;
            }
        };
        match keys {
            Ok(mut keys) => {
                let recovering = self
                    .last_failure
                    .is_some_and(|at| at.elapsed() < self.every * 3);
                let previous = self.membership.borrow().members.clone();
                keys.extend(self.missing.keep(&previous, &keys, recovering));
                let next = Membership::from_members(keys, &self.key);
                self.membership.send_if_modified(|current| {
                    if *current == next {
                        return false;
                    }
                    tracing::info!(workers = next.size(), id = %self.id, "fleet changed");
                    *current = next;
                    true
                });
            }
            Err(err) => {
                self.last_failure = Some(Instant::now());
                tracing::warn!(error = %err, "could not list the fleet");
            }
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
    fn this_worker_always_counts() {
        let membership = fleet(&["b", "c"], "a");
        assert_eq!(membership.members, ["a", "b", "c"]);
        assert_eq!(membership.index, 0);
        assert_eq!(membership.integer_share(64), 22);
    }

    fn names(members: &[&str]) -> Vec<String> {
        members.iter().map(|m| (*m).to_owned()).collect()
    }

    #[test]
    fn a_worker_is_dropped_only_when_two_listings_in_a_row_miss_it() {
        let mut missing = Missing::default();
        let fleet = names(&["a", "b", "c"]);
        assert_eq!(missing.keep(&fleet, &names(&["a", "c"]), false), ["b"]);
        // Listed again: forgotten as missing.
        assert!(missing.keep(&fleet, &fleet, false).is_empty());
        assert_eq!(missing.keep(&fleet, &names(&["a", "c"]), false), ["b"]);
        assert!(
            missing.keep(&fleet, &names(&["a", "c"]), false).is_empty(),
            "missed twice in a row: dropped"
        );
    }

    #[test]
    fn while_recovering_nobody_is_dropped() {
        let mut missing = Missing::default();
        let fleet = names(&["a", "b"]);
        assert_eq!(missing.keep(&fleet, &names(&["a"]), true), ["b"]);
        assert_eq!(missing.keep(&fleet, &names(&["a"]), true), ["b"]);
        assert!(missing.keep(&fleet, &names(&["a"]), false).is_empty());
    }

    #[test]
    fn keys_are_valid_kv_keys() {
        assert_eq!(key_for("host.example:1-ab"), "host_example_1-ab");
    }
}
