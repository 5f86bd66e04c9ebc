//! A worker's lease round against the bucket: renewing the units it holds, giving back those
//! beyond its share of the fleet, taking free ones up to it; and giving everything back when the
//! worker stops.

use std::collections::HashSet;
use std::time::Instant;

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use rand::seq::SliceRandom;

use super::{Grant, Held, Leases, Pool};
use crate::fleet::Membership;

impl Leases {
    /// One round: renew what is held, give back what is beyond this worker's share of the fleet
    /// (concurrency units only once `running` jobs fit without them), take free units up to it.
    /// Returns what may be used now. NATS errors only shrink the grant.
    pub async fn round(&mut self, membership: &Membership, running: usize) -> Grant {
        if !self.needed() {
            return Grant::unlimited();
        }
        self.renew().await;
        for pool in [Pool::Rate, Pool::Concurrency] {
            let units = self.units(pool);
            if units == 0 {
                continue;
            }
            let target = membership.integer_share(units) as usize;
            let mut mine: Vec<(u32, String)> = self
                .held
                .keys()
                .filter_map(|key| match Self::parse(key) {
                    Some((p, unit)) if p == pool => Some((unit, key.clone())),
                    _ => None,
                })
                .collect();
            // The most valuable first (concurrency units at the front are worth one more).
            mine.sort_unstable();
            if pool == Pool::Concurrency {
                self.concurrency_target = target;
            }
            if mine.len() > target {
                let mut beyond: Vec<String> = mine
                    .split_off(target)
                    .into_iter()
                    .map(|(_, key)| key)
                    .collect();
                if pool == Pool::Concurrency {
                    // Keep what the running jobs still need; the rest goes back now.
                    let kept: u32 = mine
                        .iter()
                        .map(|(unit, _)| self.concurrency_worth(*unit))
                        .sum();
                    let mut needed = u32::try_from(running)
                        .unwrap_or(u32::MAX)
                        .saturating_sub(kept);
                    beyond.retain(|key| {
                        if needed == 0 {
                            return true;
                        }
                        let worth =
                            Self::parse(key).map_or(0, |(_, unit)| self.concurrency_worth(unit));
                        needed = needed.saturating_sub(worth);
                        false
                    });
                }
                self.give_back(&beyond).await;
            } else if mine.len() < target {
                self.take(pool, units, target - mine.len()).await;
            }
        }
        self.grant(Instant::now())
    }

    /// Renews every held unit; a unit whose renewal is refused was lost (it expired and was
    /// taken, or deleted) and is forgotten; one whose renewal failed for another reason keeps its
    /// old deadline.
    async fn renew(&mut self) {
        let sent = Instant::now();
        let renewals = self.held.iter().map(|(key, held)| {
            let store = &self.store;
            let value = self.worker_id.clone();
            async move {
                let result = store.update(key, value.into(), held.revision).await;
                (key.clone(), result)
            }
        });
        let results = futures::future::join_all(renewals).await;
        for (key, result) in results {
            match result {
                Ok(revision) => {
                    self.held.insert(
                        key,
                        Held {
                            revision,
                            valid_until: sent + self.ttl - self.margin,
                        },
                    );
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::info!(lease = %key, "a capacity lease expired before it was renewed; letting it go");
                    self.held.remove(&key);
                }
                Err(err) => {
                    tracing::warn!(lease = %key, error = %err, "could not renew a capacity lease");
                }
            }
        }
        // Forget what has expired anyway: renewing it now could not undo that another may hold it.
        let now = Instant::now();
        self.held.retain(|_, held| now < held.valid_until);
    }

    async fn give_back(&mut self, keys: &[String]) {
        for key in keys {
            let Some(held) = self.held.remove(key) else {
                continue;
            };
            if let Err(err) = self
                .store
                .delete_expect_revision(key, Some(held.revision))
                .await
            {
                // It expires on its own; until then nobody can take it, which is safe.
                tracing::debug!(lease = %key, error = %err, "could not give a capacity lease back");
            }
        }
    }

    /// Takes up to `wanted` free units of a pool.
    async fn take(&mut self, pool: Pool, units: u32, wanted: usize) {
        let taken: HashSet<u32> = match self.store.keys().await {
            Ok(keys) => match keys.try_collect::<Vec<String>>().await {
                Ok(keys) => keys
                    .iter()
                    .filter_map(|key| Self::parse(key))
                    .filter(|(p, _)| *p == pool)
                    .map(|(_, unit)| unit)
                    .collect(),
                Err(err) => {
                    tracing::warn!(error = %err, "could not list the capacity leases");
                    return;
                }
            },
            Err(err) => {
                tracing::warn!(error = %err, "could not list the capacity leases");
                return;
            }
        };
        let mut free: Vec<u32> = (0..units).filter(|unit| !taken.contains(unit)).collect();
        // Concurrency units are worth more at the front: take those first; rate units in any
        // order, so workers taking at once rarely collide.
        if pool == Pool::Rate {
            free.shuffle(&mut rand::rng());
        }
        let mut got = 0;
        for unit in free {
            if got == wanted {
                break;
            }
            let key = Self::key(pool, unit);
            let sent = Instant::now();
            match self.store.create(&key, self.worker_id.clone().into()).await {
                Ok(revision) => {
                    self.held.insert(
                        key,
                        Held {
                            revision,
                            valid_until: sent + self.ttl - self.margin,
                        },
                    );
                    got += 1;
                }
                // Taken by another worker meanwhile.
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(err) => {
                    tracing::warn!(lease = %key, error = %err, "could not take a capacity lease");
                    return;
                }
            }
        }
    }

    /// Gives back everything (a worker stopping), so the others take it at their next round.
    pub async fn release_all(&mut self) {
        let keys: Vec<String> = self.held.keys().cloned().collect();
        self.give_back(&keys).await;
    }
}
