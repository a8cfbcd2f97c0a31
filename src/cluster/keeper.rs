//! The lease keeper: a thread of its own (its own connection and runtime, so a pipeline
//! that is full and holds the source back never delays a renewal) that every quarter lease
//! reads the lease bucket, writes its heartbeat, and carries out the planner's steps (renew,
//! release, claim), each a compare-and-swap; what it wins or loses goes to `Ownership`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use super::lease::{Held, LeaseValue, Planner, Seen, Step, View};
use super::ownership::Ownership;
use super::stream::{connect, lease_bucket};
use crate::config::cluster::ClusterConfig;
use crate::metrics::Metrics;

/// How long a release waits for the source to stop consuming the partition.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What the keeper does when asked to stop.
const RUNNING: u8 = 0;
const STOP_AND_RELEASE: u8 = 1;

/// The running keeper.
#[derive(Debug)]
pub(crate) struct KeeperHandle {
    stop: Arc<AtomicU8>,
    thread: JoinHandle<()>,
}

impl KeeperHandle {
    /// Stops renewing and gives every held partition back (its source must have stopped),
    /// so peers take over at once instead of after a lease.
    pub(crate) fn release_all(self) {
        self.stop.store(STOP_AND_RELEASE, Relaxed);
        let _ = self.thread.join();
    }
}

/// Waits until the source has stopped consuming `partition`, or a while at most.
async fn wait_stopped(ownership: &Ownership, partition: u32) {
    let until = Instant::now() + STOP_WAIT;
    while !ownership.has_stopped(partition) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lease_key(partition: u32) -> String {
    format!("p.{partition}")
}

fn lease_bytes(owner: &str, epoch: u64) -> bytes::Bytes {
    let value = LeaseValue {
        owner: owner.to_string(),
        epoch,
    };
    bytes::Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// Starts the keeper; returns once it has connected and opened the bucket.
pub(crate) fn start(
    url: &str,
    config: &ClusterConfig,
    ownership: Arc<Ownership>,
    metrics: Arc<Metrics>,
) -> Result<KeeperHandle, String> {
    let stop = Arc::new(AtomicU8::new(RUNNING));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (url, config, stopping) = (url.to_string(), config.clone(), Arc::clone(&stop));
    let thread = std::thread::Builder::new()
        .name("leases".to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("starting the lease keeper: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let name = format!("{}-leases", ownership.instance);
                let store = match connect(&url, &name).await {
                    Ok(client) => lease_bucket(&jetstream::new(client), &config).await,
                    Err(e) => Err(e),
                };
                let store = match store {
                    Ok(store) => {
                        let _ = ready_tx.send(Ok(()));
                        store
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // The partitions and, when there is one, the whole-stream slot.
                let slots = ownership.layout().slots();
                let mut keeper = Keeper {
                    store,
                    lease: Duration::from_millis(config.lease.0 as u64),
                    planner: Planner::new(&ownership.instance, slots, Duration::from_millis(config.lease.0 as u64)),
                    partitions: slots,
                    ownership,
                    metrics,
                    joined: false,
                };
                let round = keeper.lease / 4;
                while stopping.load(Relaxed) == RUNNING {
                    keeper.round().await;
                    let until = Instant::now() + round;
                    while stopping.load(Relaxed) == RUNNING && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                keeper.release_all().await;
            });
        })
        .map_err(|e| format!("starting the lease keeper: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(KeeperHandle { stop, thread }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err("the lease keeper stopped while starting".to_string()),
    }
}

struct Keeper {
    store: kv::Store,
    lease: Duration,
    planner: Planner,
    /// Lease keys `p.0` … (the partitions, then the whole-stream slot if leased).
    partitions: u32,
    ownership: Arc<Ownership>,
    metrics: Arc<Metrics>,
    /// Whether a round has run: the first only announces this instance (its heartbeat),
    /// so that instances starting together see each other before they claim, instead of
    /// the first claiming every partition and giving most back once its peers appear.
    joined: bool,
}

impl Keeper {
    /// Until when a write sent at `sent` keeps the lease valid here: a tenth short of the
    /// lease, for clocks that do not run at quite the same rate.
    fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.lease - self.lease / 10
    }

    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.metrics.cluster.lease_errors.fetch_add(1, Relaxed);
        tracing::warn!(error = %error, "leases: {what} failed; held partitions stop at their lease's end unless a later write succeeds (check that NATS is reachable)");
    }

    /// The bucket now: every partition key and every heartbeat.
    async fn read(&self) -> Result<View, String> {
        let mut view = View::default();
        for partition in 0..self.partitions {
            let entry = self
                .store
                .entry(lease_key(partition))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(entry) = entry {
                let value = match entry.operation {
                    kv::Operation::Put => serde_json::from_slice::<LeaseValue>(&entry.value).ok(),
                    _ => None,
                };
                view.partitions.insert(
                    partition,
                    Seen {
                        revision: entry.revision,
                        value,
                    },
                );
            }
        }
        // The heartbeats' keys, from the bucket stream's subjects: one request, where the
        // client's `keys()` would create a consumer each round (slow on a loaded cluster,
        // and stuck while its node is gone).
        let heartbeats = format!("{}i.", self.store.prefix);
        let mut subjects = self
            .store
            .stream
            .info_with_subjects(format!("{heartbeats}>"))
            .await
            .map_err(|e| e.to_string())?;
        let mut instances = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| e.to_string())?;
            if let Some(instance) = subject.strip_prefix(&heartbeats) {
                instances.push(instance.to_string());
            }
        }
        for instance in instances {
            if let Ok(Some(entry)) = self.store.entry(format!("i.{instance}")).await
                && entry.operation == kv::Operation::Put
            {
                view.instances.insert(instance, entry.revision);
            }
        }
        Ok(view)
    }

    /// One round: heartbeat, read, drop what peers took, then renew, release and claim.
    async fn round(&mut self) {
        let me = self.ownership.instance.clone();
        // A request NATS does not answer within half a lease fails the round (the next one
        // asks again), where the client would wait 10 s, as long as the default lease: a
        // keeper stuck on one answer (a bucket just created, its leader not yet elected)
        // would let every lease it holds lapse, and a joining one would stay unseen by its
        // peers. Half a lease leaves what it holds valid (renewed a round before).
        let limit = self.lease / 2;
        let heartbeat = self.store.put(
            format!("i.{me}"),
            bytes::Bytes::from(format!("{{\"instance\":{me:?}}}")),
        );
        match tokio::time::timeout(limit, heartbeat).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.failed("the heartbeat", &e),
            Err(_) => self.failed("the heartbeat", &"no answer within half a lease"),
        }
        let view = match tokio::time::timeout(limit, self.read()).await {
            Ok(Ok(view)) => view,
            Ok(Err(e)) => return self.failed("reading the lease bucket", &e),
            Err(_) => return self.failed("reading the lease bucket", &"no answer within half a lease"),
        };
        let mut held = BTreeMap::new();
        // Partitions being released are on their way out: neither renewed nor planned.
        let releasing = self.ownership.releasing();
        for (partition, h) in self.ownership.held() {
            if releasing.contains(&partition) {
                continue;
            }
            if view.partitions.get(&partition).map(|s| s.revision) == Some(h.revision) {
                held.insert(partition, h);
            } else {
                tracing::warn!(
                    partition,
                    "leases: a peer holds partition {partition} now; stopping it here"
                );
                self.ownership.lose(partition, true);
            }
        }
        if !std::mem::replace(&mut self.joined, true) {
            return;
        }
        for step in self.planner.plan(&view, &held, Instant::now()) {
            self.carry_out(step, &me).await;
        }
    }

    async fn carry_out(&mut self, step: Step, me: &str) {
        match step {
            Step::Renew {
                partition,
                revision,
                epoch,
            } => {
                let sent = Instant::now();
                match self
                    .store
                    .update(lease_key(partition), lease_bytes(me, epoch), revision)
                    .await
                {
                    Ok(revision) => self.ownership.renewed(
                        partition,
                        Held {
                            revision,
                            epoch,
                            valid_until: self.valid_until(sent),
                        },
                    ),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        tracing::warn!(
                            partition,
                            "leases: a peer holds partition {partition} now; stopping it here"
                        );
                        self.ownership.lose(partition, true);
                    }
                    Err(e) => self.failed("renewing a lease", &e),
                }
            }
            Step::Release {
                partition,
                revision,
                epoch,
            } => {
                // Checkpointed, stopped and settled in the background (the source gives it
                // up once its last checkpoint is stored): renewals of the rest go on.
                self.ownership.release(partition);
                let (ownership, store, metrics) = (
                    Arc::clone(&self.ownership),
                    self.store.clone(),
                    Arc::clone(&self.metrics),
                );
                tokio::spawn(async move {
                    wait_stopped(&ownership, partition).await;
                    // Fenced whether or not the source got to it.
                    ownership.lose(partition, false);
                    ownership.drain().await;
                    tracing::info!(
                        partition,
                        "leases: releasing partition {partition} to a peer (balancing)"
                    );
                    if let Err(e) = store
                        .update(lease_key(partition), lease_bytes("", epoch), revision)
                        .await
                    {
                        metrics.cluster.lease_errors.fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, "leases: releasing partition {partition} failed; a peer takes it when its lease ends");
                    }
                });
            }
            Step::Claim {
                partition,
                revision,
                epoch,
                previous_epoch,
            } => {
                let sent = Instant::now();
                let written = match revision {
                    None => self
                        .store
                        .create(lease_key(partition), lease_bytes(me, epoch))
                        .await
                        .map_err(|e| e.to_string()),
                    Some(r) => self
                        .store
                        .update(lease_key(partition), lease_bytes(me, epoch), r)
                        .await
                        .map_err(|e| e.to_string()),
                };
                // A lost race is no error: a peer claimed it first.
                if let Ok(revision) = written {
                    tracing::info!(
                        partition,
                        epoch,
                        "leases: claimed partition {partition} (epoch {epoch})"
                    );
                    self.ownership.gain(
                        partition,
                        Held {
                            revision,
                            epoch,
                            valid_until: self.valid_until(sent),
                        },
                        previous_epoch.is_some(),
                    );
                }
            }
        }
    }

    /// Gives every held partition back (a stop).
    async fn release_all(&mut self) {
        let held = self.ownership.held();
        for partition in held.keys() {
            self.ownership.lose(*partition, false);
            wait_stopped(&self.ownership, *partition).await;
        }
        self.ownership.drain().await;
        for (partition, h) in held {
            if let Err(e) = self
                .store
                .update(lease_key(partition), lease_bytes("", h.epoch), h.revision)
                .await
            {
                self.failed("releasing a lease at the stop", &e);
            }
        }
        let _ = self.store.delete(format!("i.{}", self.ownership.instance)).await;
    }
}
