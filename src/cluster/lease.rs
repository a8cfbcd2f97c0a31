//! Who consumes which partition: leases in a JetStream KV bucket, decided here as a pure
//! plan over what the bucket holds (the keeper, `keeper.rs`, reads and writes it).
//!
//! ```text
//! p.<n>           {"owner": "<instance>", "epoch": e}   held; owner "" = released
//! i.<instance>    {"instance": "<instance>"}           a heartbeat, rewritten every round
//! ```
//!
//! Every write is a compare-and-swap on the key's revision, so of two instances claiming one
//! partition exactly one wins, and each claim raises the partition's epoch by one. A lease
//! is alive while its revision keeps changing: each instance times the revision it last saw
//! on its own clock, so clocks of different machines never need to agree, and a lease not
//! rewritten for `lease` is taken over. The owner counts its lease valid only until `lease`
//! after it *sent* its last successful write: a peer cannot take the partition before that
//! (it starts timing when it *sees* the write, later), so an owner that stalled past its
//! lease stops before anyone else starts. Each instance aims at its fair share
//! (⌈partitions / live instances⌉): above it, it releases partitions (highest first), below
//! it, it claims free or expired ones, starting at a place its name hashes to so peers do
//! not all reach for the same ones.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::partition::partition_of;

/// What a partition key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseValue {
    /// The holder; empty when released.
    pub owner: String,
    /// Raised by one at each claim: a holder's epoch names its tenure.
    pub epoch: u64,
}

/// A key as the bucket holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub revision: u64,
    /// `None` when the key was deleted or its value is not a lease.
    pub value: Option<LeaseValue>,
}

/// The bucket at one read: partition keys and instance heartbeats (by their revisions).
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    pub partitions: BTreeMap<u32, Seen>,
    pub instances: BTreeMap<String, u64>,
}

/// A partition this instance holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// The key's revision after this instance's last write.
    pub revision: u64,
    pub epoch: u64,
    /// Until when this instance may act on the partition.
    pub valid_until: Instant,
}

/// One write the keeper makes, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Rewrite a held lease (it stays alive).
    Renew { partition: u32, revision: u64, epoch: u64 },
    /// Take a partition: create its key (`revision` None) or replace the revision seen.
    Claim {
        partition: u32,
        revision: Option<u64>,
        epoch: u64,
        /// The tenure it ends, if any (its consumer's position is where this one resumes).
        previous_epoch: Option<u64>,
    },
    /// Give a held partition back (above the fair share).
    Release { partition: u32, revision: u64, epoch: u64 },
}

/// The plan's memory: when this instance first saw each key's current revision.
#[derive(Debug)]
pub(crate) struct Planner {
    me: String,
    partitions: u32,
    lease: Duration,
    first_seen: HashMap<String, (u64, Instant)>,
}

impl Planner {
    pub(crate) fn new(me: &str, partitions: u32, lease: Duration) -> Self {
        Planner {
            me: me.to_string(),
            partitions,
            lease,
            first_seen: HashMap::new(),
        }
    }

    /// How long this instance has seen `key` at `revision` unchanged.
    fn unchanged_for(&mut self, key: String, revision: u64, now: Instant) -> Duration {
        let seen = self.first_seen.entry(key).or_insert((revision, now));
        if seen.0 != revision {
            *seen = (revision, now);
        }
        now.saturating_duration_since(seen.1)
    }

    /// Instances alive at `now` (this one included), by their heartbeats.
    pub(crate) fn live_instances(&mut self, view: &View, now: Instant) -> Vec<String> {
        let mut live: Vec<String> = Vec::new();
        for (instance, revision) in &view.instances {
            if *instance == self.me || self.unchanged_for(format!("i.{instance}"), *revision, now) < self.lease {
                live.push(instance.clone());
            }
        }
        if !live.contains(&self.me) {
            live.push(self.me.clone());
        }
        live.sort();
        live
    }

    /// This round's writes: renew what is held, then release above the fair share or claim
    /// free and expired partitions below it.
    pub(crate) fn plan(&mut self, view: &View, held: &BTreeMap<u32, Held>, now: Instant) -> Vec<Step> {
        let live = self.live_instances(view, now);
        let share = self.partitions.div_ceil(live.len() as u32) as usize;
        let mut steps = Vec::new();
        let mut kept = 0;
        // Held leases whose key still shows this instance's last write, renewed or released.
        let still_held: Vec<(u32, Held)> = held
            .iter()
            .filter(|(p, h)| view.partitions.get(p).is_some_and(|s| s.revision == h.revision))
            .map(|(p, h)| (*p, *h))
            .collect();
        let surplus = still_held.len().saturating_sub(share);
        for (index, (partition, h)) in still_held.iter().enumerate() {
            if index >= still_held.len() - surplus {
                steps.push(Step::Release {
                    partition: *partition,
                    revision: h.revision,
                    epoch: h.epoch,
                });
            } else {
                kept += 1;
                steps.push(Step::Renew {
                    partition: *partition,
                    revision: h.revision,
                    epoch: h.epoch,
                });
            }
        }
        // Time every partition key, so expiry is measured however often a key is looked at.
        let mut claimable = Vec::new();
        for partition in 0..self.partitions {
            let seen = view.partitions.get(&partition);
            let unchanged = seen.map(|s| self.unchanged_for(format!("p.{partition}"), s.revision, now));
            if held.contains_key(&partition) {
                continue;
            }
            let free = match seen {
                None => true,
                Some(Seen { value: None, .. }) => true,
                Some(Seen { value: Some(v), .. }) if v.owner.is_empty() => true,
                Some(_) => unchanged.is_some_and(|u| u >= self.lease),
            };
            if free {
                claimable.push(partition);
            }
        }
        let start = partition_of(&[&self.me], self.partitions);
        claimable.sort_by_key(|p| (p + self.partitions - start) % self.partitions);
        for partition in claimable.into_iter().take(share.saturating_sub(kept)) {
            let seen = view.partitions.get(&partition);
            let previous_epoch = seen.and_then(|s| s.value.as_ref()).map(|v| v.epoch);
            steps.push(Step::Claim {
                partition,
                revision: seen.map(|s| s.revision),
                epoch: previous_epoch.unwrap_or(0) + 1,
                previous_epoch: previous_epoch.filter(|e| *e > 0),
            });
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    fn lease(owner: &str, epoch: u64, revision: u64) -> Seen {
        Seen {
            revision,
            value: Some(LeaseValue {
                owner: owner.to_string(),
                epoch,
            }),
        }
    }

    fn claims(steps: &[Step]) -> Vec<u32> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Claim { partition, .. } => Some(*partition),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn alone_an_instance_claims_every_partition_with_epoch_one() {
        let mut planner = Planner::new("a", 4, LEASE);
        let steps = planner.plan(&View::default(), &BTreeMap::new(), Instant::now());
        let mut claimed = claims(&steps);
        claimed.sort();
        assert_eq!(claimed, [0, 1, 2, 3]);
        assert!(steps.iter().all(|s| matches!(
            s,
            Step::Claim {
                revision: None,
                epoch: 1,
                previous_epoch: None,
                ..
            }
        )));
    }

    #[test]
    fn a_peer_joining_makes_the_holder_release_down_to_its_share() {
        let now = Instant::now();
        let mut planner = Planner::new("a", 4, LEASE);
        let mut view = View::default();
        let mut held = BTreeMap::new();
        for p in 0..4 {
            view.partitions.insert(p, lease("a", 1, 10 + u64::from(p)));
            held.insert(
                p,
                Held {
                    revision: 10 + u64::from(p),
                    epoch: 1,
                    valid_until: now + LEASE,
                },
            );
        }
        view.instances.insert("a".to_string(), 1);
        view.instances.insert("b".to_string(), 2);
        let steps = planner.plan(&view, &held, now);
        assert_eq!(
            steps,
            [
                Step::Renew {
                    partition: 0,
                    revision: 10,
                    epoch: 1
                },
                Step::Renew {
                    partition: 1,
                    revision: 11,
                    epoch: 1
                },
                Step::Release {
                    partition: 2,
                    revision: 12,
                    epoch: 1
                },
                Step::Release {
                    partition: 3,
                    revision: 13,
                    epoch: 1
                },
            ]
        );
        // b sees 2 and 3 released and claims them, keeping their epochs' succession.
        view.partitions.insert(2, lease("", 1, 20));
        view.partitions.insert(3, lease("", 1, 21));
        let mut b = Planner::new("b", 4, LEASE);
        let steps = b.plan(&view, &BTreeMap::new(), now);
        let mut claimed = claims(&steps);
        claimed.sort();
        assert_eq!(claimed, [2, 3]);
        assert!(steps.contains(&Step::Claim {
            partition: 2,
            revision: Some(20),
            epoch: 2,
            previous_epoch: Some(1)
        }));
    }

    #[test]
    fn a_lease_is_taken_over_only_once_unchanged_for_a_whole_lease_on_the_takers_clock() {
        let start = Instant::now();
        let mut b = Planner::new("b", 2, LEASE);
        let mut view = View::default();
        view.partitions.insert(0, lease("a", 3, 7));
        view.partitions.insert(1, lease("b", 1, 8));
        view.instances.insert("a".to_string(), 1);
        let mut held = BTreeMap::new();
        held.insert(
            1,
            Held {
                revision: 8,
                epoch: 1,
                valid_until: start + LEASE,
            },
        );
        assert!(claims(&b.plan(&view, &held, start)).is_empty());
        assert!(claims(&b.plan(&view, &held, start + LEASE - Duration::from_millis(1))).is_empty());
        // a renewed just before: timing starts again.
        view.partitions.insert(0, lease("a", 3, 9));
        view.instances.insert("a".to_string(), 2);
        assert!(claims(&b.plan(&view, &held, start + LEASE)).is_empty());
        // Silent for a whole lease after that: b takes it, with the next epoch.
        let steps = b.plan(&view, &held, start + 2 * LEASE);
        assert!(steps.contains(&Step::Claim {
            partition: 0,
            revision: Some(9),
            epoch: 4,
            previous_epoch: Some(3)
        }));
    }

    #[test]
    fn a_lease_someone_else_rewrote_is_neither_renewed_nor_released() {
        let now = Instant::now();
        let mut a = Planner::new("a", 1, LEASE);
        let mut view = View::default();
        view.partitions.insert(0, lease("b", 2, 30));
        let mut held = BTreeMap::new();
        held.insert(
            0,
            Held {
                revision: 29,
                epoch: 1,
                valid_until: now,
            },
        );
        assert!(a.plan(&view, &held, now).is_empty());
    }

    #[test]
    fn peers_start_claiming_at_different_places() {
        let now = Instant::now();
        let mut view = View::default();
        view.instances.insert("node-1".to_string(), 1);
        view.instances.insert("node-2".to_string(), 1);
        let first = |name: &str| {
            let mut planner = Planner::new(name, 32, LEASE);
            claims(&planner.plan(&view, &BTreeMap::new(), now))
        };
        let (one, two) = (first("node-1"), first("node-2"));
        assert_eq!((one.len(), two.len()), (16, 16));
        assert_ne!(one, two);
    }
}
