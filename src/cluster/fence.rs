//! The sink's fence on a cluster instance: a warning goes out only while the lease of its
//! partition is valid here (an owner that stalled past its lease stays silent; a warning
//! whose lease lapsed waits until it is renewed, or found taken and dropped), and only if
//! no instance sent it before (the shared delivery record, a KV bucket keyed by the
//! notification's identity, `<alert_id>.<transition>`): the instance that takes a partition
//! over computes its alerts again from the stream and sends only what was not yet sent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use parking_lot::Mutex;

use super::checkpoints::CheckpointStore;
use super::ownership::{Ownership, Standing};
use crate::alert::sink::Fence;
use crate::alert::warning::Warning;
use crate::metrics::Metrics;
use crate::state::checkpoint::Checkpoint;

/// How long one request to the delivery record may take.
const RECORD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the sink keeps asking the delivery record (a NATS node lost: its buckets elect
/// new leaders, which takes seconds) before it sends anyway, or gives up recording: twice
/// is better than never. Warnings wait that long at most while NATS cannot answer.
pub(crate) const RECORD_PATIENCE: Duration = Duration::from_secs(15);
/// The pause between two tries.
const RECORD_RETRY: Duration = Duration::from_millis(200);
/// How often a warning whose lease lapsed looks again.
const LAPSED_POLL: Duration = Duration::from_millis(20);
/// How long storing one partition checkpoint may take (the sink thread waits for it).
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a store failed, checkpoints are not tried for this long: with NATS unable to take
/// them, each would hold the sink thread for `CHECKPOINT_TIMEOUT`.
const CHECKPOINT_BACKOFF: Duration = Duration::from_secs(10);

/// Leases and the delivery record, for the sink thread.
#[derive(Debug)]
pub(crate) struct ClusterFence {
    ownership: Arc<Ownership>,
    record: kv::Store,
    /// Sent, waiting for the sinks to confirm before they are recorded.
    pending: Mutex<BTreeSet<String>>,
    /// Where the partitions' checkpoints go (`None`: checkpoints are off).
    checkpoints: Option<CheckpointStore>,
    /// The (partition, epoch) pairs whose first checkpoint was stored (logged once each).
    checkpointed: Mutex<BTreeSet<(u32, u64)>>,
    /// When a checkpoint store last failed.
    store_failed: Mutex<Option<Instant>>,
    /// Drives the record's connection; the sink thread blocks on it.
    runtime: tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
}

fn key(warning: &Warning) -> String {
    format!("{}.{}", warning.alert_id, warning.transition)
}

impl ClusterFence {
    pub(crate) fn new(
        ownership: Arc<Ownership>,
        record: kv::Store,
        checkpoints: Option<CheckpointStore>,
        runtime: tokio::runtime::Runtime,
        metrics: Arc<Metrics>,
    ) -> Self {
        ClusterFence {
            ownership,
            record,
            pending: Mutex::new(BTreeSet::new()),
            checkpoints,
            checkpointed: Mutex::new(BTreeSet::new()),
            store_failed: Mutex::new(None),
            runtime,
            metrics,
        }
    }
}

impl ClusterFence {
    /// Writes `keys` into the delivery record; those whose write failed.
    async fn record_all(&self, keys: Vec<String>) -> Vec<String> {
        let writes = keys
            .iter()
            .map(|key| tokio::time::timeout(RECORD_TIMEOUT, self.record.put(key, bytes::Bytes::from_static(b"sent"))));
        let results = futures::future::join_all(writes).await;
        keys.into_iter()
            .zip(results)
            .filter(|(_, written)| !matches!(written, Ok(Ok(_))))
            .map(|(key, _)| key)
            .collect()
    }
}

impl Fence for ClusterFence {
    fn admits(&self, partition: Option<u32>, warning: &Warning) -> bool {
        let key = key(warning);
        if self.pending.lock().contains(&key) {
            self.metrics.cluster.already_sent.fetch_add(1, Relaxed);
            return false;
        }
        // A partition just taken over: its previous holder's last records may still be on
        // their way.
        if let Some(wait) = self.ownership.takeover_wait(partition) {
            std::thread::sleep(wait);
        }
        let asked = Instant::now();
        let unsent = loop {
            let looked = self
                .runtime
                .block_on(async { tokio::time::timeout(RECORD_TIMEOUT, self.record.get(&key)).await });
            match looked {
                Ok(Ok(Some(_))) => break false,
                Ok(Ok(None)) => break true,
                _ if asked.elapsed() < RECORD_PATIENCE => std::thread::sleep(RECORD_RETRY),
                _ => {
                    self.metrics.cluster.record_errors.fetch_add(1, Relaxed);
                    break true;
                }
            }
        };
        if !unsent {
            self.metrics.cluster.already_sent.fetch_add(1, Relaxed);
            return false;
        }
        // The lease is looked at last, right before the send: an instance frozen while it
        // waited on the record (SIGSTOP, a long GC-like pause of the host) finds its lease
        // lapsed when it wakes. A lapsed lease either comes back (a late renewal) or is
        // found taken: until then nothing goes out, and nothing is dropped that no other
        // instance will send.
        loop {
            match self.ownership.standing(partition) {
                Standing::Valid => return true,
                Standing::Lapsed => std::thread::sleep(LAPSED_POLL),
                Standing::NotHeld => {
                    self.metrics.cluster.fenced_warnings.fetch_add(1, Relaxed);
                    return false;
                }
            }
        }
    }

    fn sent(&self, warning: &Warning) {
        self.pending.lock().insert(key(warning));
    }

    fn waits(&self) -> bool {
        !self.pending.lock().is_empty()
    }

    /// Records what the sinks confirmed; what they could not is left unrecorded, so the
    /// instance that takes its partition over sends it again, with the same identity. A
    /// write that fails (a NATS node gone, its leader being elected again) is tried again
    /// for `RECORD_PATIENCE`: a notification sent but not recorded is sent twice after a
    /// takeover.
    fn settled(&self, confirmed: bool) {
        let mut keys: Vec<String> = std::mem::take(&mut *self.pending.lock()).into_iter().collect();
        if !confirmed {
            return;
        }
        let started = Instant::now();
        loop {
            keys = self.runtime.block_on(self.record_all(keys));
            if keys.is_empty() {
                return;
            }
            if started.elapsed() >= RECORD_PATIENCE {
                break;
            }
            std::thread::sleep(RECORD_RETRY);
        }
        self.metrics.cluster.record_errors.fetch_add(keys.len() as u64, Relaxed);
    }

    /// Stores the checkpoint while the partition is still held under the epoch its pipeline
    /// started with. A checkpoint stored late (this instance stalled after the look) is
    /// still true: the partition's state is a function of its stream, and everything before
    /// the cut went out, so it holds whoever computed it.
    fn checkpoint(&self, partition: u32, epoch: u64, checkpoint: &Checkpoint) {
        let Some(store) = &self.checkpoints else { return };
        let metrics = &self.metrics.cluster;
        if !self.ownership.holds_at(partition, epoch) {
            metrics.checkpoint_failures.fetch_add(1, Relaxed);
            tracing::debug!(
                partition,
                epoch,
                "cluster: checkpoint not stored: the lease it was computed under is gone"
            );
            return;
        }
        if self
            .store_failed
            .lock()
            .is_some_and(|failed| failed.elapsed() < CHECKPOINT_BACKOFF)
        {
            metrics.checkpoint_failures.fetch_add(1, Relaxed);
            return;
        }
        let stored = self
            .runtime
            .block_on(async { tokio::time::timeout(CHECKPOINT_TIMEOUT, store.save(partition, checkpoint)).await });
        match stored {
            Ok(Ok(bytes)) => {
                metrics.checkpoints.fetch_add(1, Relaxed);
                metrics.checkpointed.lock().insert(partition, checkpoint.covers_seq);
                self.ownership.checkpoint_stored(partition, checkpoint.covers_seq);
                if self.checkpointed.lock().insert((partition, epoch)) {
                    tracing::info!(
                        partition,
                        epoch,
                        covers_seq = checkpoint.covers_seq,
                        bytes,
                        "cluster: partition {partition}'s state is checkpointed (a takeover goes on from the newest checkpoint)"
                    );
                }
                tracing::debug!(
                    partition,
                    checkpoint = checkpoint.number,
                    covers_seq = checkpoint.covers_seq,
                    replay_from = checkpoint.replay_from,
                    bytes,
                    "cluster: checkpoint stored"
                );
            }
            failed => {
                metrics.checkpoint_failures.fetch_add(1, Relaxed);
                *self.store_failed.lock() = Some(Instant::now());
                let error = match failed {
                    Ok(Err(e)) => e,
                    _ => "no answer from NATS".to_string(),
                };
                tracing::warn!(partition, error = %error, "cluster: partition {partition}'s checkpoint not stored; checkpoints are tried again in 10 s (a takeover meanwhile goes on from the one before)");
            }
        }
    }
}
