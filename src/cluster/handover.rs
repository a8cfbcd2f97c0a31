//! A handover on a cluster instance, at a stop (Ctrl-C, SIGTERM) or of a partition given to
//! a peer for balance: before the partitions are fenced and their leases given back, each
//! partition's consumer stops and its pipeline
//! cuts a last checkpoint through the last item it was handed (`Fed::LastCut`); the
//! instance waits until the sink thread has sent everything before the cut and stored the
//! checkpoint, `PATIENCE` at most. The peer that takes a partition over goes on from exactly
//! where this instance stopped: it re-reads only the rows of the open windows and computes
//! nothing again that was sent. A partition whose last checkpoint is not stored in time
//! (NATS slow or gone) is handed over all the same, from its checkpoint before.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::consumer::send;
use super::instance::{Running, stop};
use super::ownership::Ownership;
use crate::ingest::partition_feed::Fed;

/// How long a handover waits for its partitions' last checkpoints, all together: less
/// than a balance release waits for the source (`keeper::STOP_WAIT`).
const PATIENCE: Duration = Duration::from_secs(5);

/// Hands over the partitions the keeper gives to a peer for balance (`Ownership::releasing`):
/// their state through the last reading read is stored under the lease (when `checkpoints`
/// are kept), then they are fenced and stopped. Those not running are only marked stopped.
pub(super) async fn released(running: &mut BTreeMap<u32, Running>, ownership: &Ownership, checkpoints: bool) {
    let releasing = ownership.releasing();
    if releasing.is_empty() {
        return;
    }
    let leaving: BTreeMap<u32, Running> = running.extract_if(.., |p, _| releasing.contains(p)).collect();
    if checkpoints {
        last_checkpoints(&leaving, ownership).await;
    }
    for partition in releasing.iter().filter(|p| !leaving.contains_key(p)) {
        ownership.lose(*partition, false);
        ownership.stopped(*partition);
    }
    for (partition, gone) in leaving {
        ownership.lose(partition, false);
        stop(partition, gone, ownership).await;
    }
}

/// Stops every partition's consumer and waits until each partition's state through its
/// last item read is stored (or `PATIENCE` passed); logs what each partition is handed
/// over with.
pub(super) async fn last_checkpoints(running: &BTreeMap<u32, Running>, ownership: &Ownership) {
    let mut stored = ownership.stored_checkpoints();
    for partition in running.values() {
        partition.consumer.abort();
    }
    while !running.values().all(|p| p.consumer.is_finished()) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Partitions that read something since the checkpoint they started from.
    let mut waiting: BTreeMap<u32, u64> = BTreeMap::new();
    for (&partition, run) in running {
        let fed = run.fed_seq.load(Relaxed);
        if fed > run.resumed_seq && send(&run.feed, Fed::LastCut).await {
            waiting.insert(partition, fed);
        }
    }
    let until = tokio::time::Instant::now() + PATIENCE;
    loop {
        let newest = stored.borrow_and_update().clone();
        waiting.retain(|partition, fed| {
            let covered = newest.get(partition).copied().unwrap_or(0);
            if covered < *fed {
                return true;
            }
            tracing::info!(
                partition = *partition,
                covers_seq = covered,
                "cluster: partition {partition} handed over with its checkpoint through stream sequence {covered}"
            );
            false
        });
        if waiting.is_empty() || !matches!(tokio::time::timeout_at(until, stored.changed()).await, Ok(Ok(()))) {
            break;
        }
    }
    for partition in waiting.keys() {
        tracing::warn!(
            partition = *partition,
            "cluster: partition {partition} handed over without its last checkpoint (not stored within {PATIENCE:?}): its next owner goes on from the one before"
        );
    }
}
