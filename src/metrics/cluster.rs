//! The scale-out counters (`run --nats`): this instance, the partitions it holds, each
//! partition's lag behind the stream's head, takeovers and fencing. Empty on other sources.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;

/// What `/metrics` and the dashboard show of the cluster.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// This instance's name in the leases; empty when not running on NATS.
    pub instance: Mutex<String>,
    /// The stream's partition count.
    pub partitions: AtomicU64,
    /// Partitions held now.
    pub owned: AtomicU64,
    /// Held partitions and their epochs.
    pub held: Mutex<BTreeMap<u32, u64>>,
    /// Per partition consumed: readings in the stream not yet delivered here.
    pub lag: Mutex<BTreeMap<u32, u64>>,
    /// Partitions claimed from a previous holder (a peer that stopped, died or released).
    pub takeovers: AtomicU64,
    /// Leases found rewritten by a peer while this instance thought it held them.
    pub leases_lost: AtomicU64,
    /// Lease writes that failed (NATS unreachable, or a compare-and-swap lost).
    pub lease_errors: AtomicU64,
    /// Readings dropped unacknowledged because their partition's lease had lapsed here.
    pub fenced_messages: AtomicU64,
    /// Warnings not sent because their partition is not held (or its lease lapsed) here.
    pub fenced_warnings: AtomicU64,
    /// Notifications computed again after a takeover that an earlier owner had sent.
    pub already_sent: AtomicU64,
    /// Delivery-record reads or writes that failed (the warning was sent regardless).
    pub record_errors: AtomicU64,
    /// Partition checkpoints stored.
    pub checkpoints: AtomicU64,
    /// Partition checkpoints not stored: the store failed, or the partition's lease was
    /// lost or lapsed before the write.
    pub checkpoint_failures: AtomicU64,
    /// Per partition: the stream sequence its last stored checkpoint covers.
    pub checkpointed: Mutex<BTreeMap<u32, u64>>,
    /// Partitions started from a stored checkpoint (the rest from their first reading).
    pub resumed: AtomicU64,
}
