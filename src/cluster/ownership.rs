//! What this instance holds now, shared by the lease keeper (which changes it), the NATS
//! source (which consumes what it holds) and the sink thread (which sends only warnings of
//! partitions it holds): the fence that keeps a stalled owner silent once its lease lapsed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::lease::Held;
use super::partition::Layout;
use crate::alert::sink::Notice;

/// How long giving a partition up waits for the sinks to settle what it sent: longer than
/// the fence keeps trying to record it, so its successor finds it recorded.
const DRAIN_LIMIT: std::time::Duration =
    super::fence::RECORD_PATIENCE.saturating_add(std::time::Duration::from_secs(5));
use crate::metrics::Metrics;

#[derive(Debug, Default)]
struct Inner {
    held: BTreeMap<u32, Held>,
    /// When each partition taken from an earlier holder was claimed.
    claimed_at: BTreeMap<u32, Instant>,
    /// Partitions the source has stopped consuming since they were given up.
    stopped: Vec<u32>,
    /// Held partitions being given to a peer (balance): no longer renewed, still valid
    /// until their source has checkpointed and stopped them.
    releasing: std::collections::BTreeSet<u32>,
}

/// The partitions held, shared.
#[derive(Debug)]
pub(crate) struct Ownership {
    pub(crate) instance: String,
    layout: Layout,
    inner: Mutex<Inner>,
    /// Bumped at each gain or loss; the source watches it.
    changed: tokio::sync::watch::Sender<u64>,
    /// The stream sequence each partition's newest checkpoint stored by this run goes
    /// through; a handover watches it.
    stored: tokio::sync::watch::Sender<BTreeMap<u32, u64>>,
    metrics: Arc<Metrics>,
    /// The run's sink queue, to drain before a partition is given up.
    sinks: Mutex<Option<tokio::sync::mpsc::WeakSender<Notice>>>,
    /// How long after taking a partition over its first notification waits (see
    /// `takeover_wait`).
    takeover_grace: Duration,
}

impl Ownership {
    pub(crate) fn new(instance: &str, layout: Layout, takeover_grace: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        let (changed, _) = tokio::sync::watch::channel(0);
        let (stored, _) = tokio::sync::watch::channel(BTreeMap::new());
        *metrics.cluster.instance.lock() = instance.to_string();
        metrics
            .cluster
            .partitions
            .store(u64::from(layout.partitions()), Relaxed);
        Arc::new(Ownership {
            instance: instance.to_string(),
            layout,
            inner: Mutex::new(Inner::default()),
            changed,
            stored,
            metrics,
            sinks: Mutex::new(None),
            takeover_grace,
        })
    }

    /// Where `drain` sends its marker: the run's sink queue (held weakly, so the queue
    /// still closes when the run's senders are gone).
    pub(crate) fn drain_through(&self, sinks: &tokio::sync::mpsc::Sender<Notice>) {
        *self.sinks.lock() = Some(sinks.downgrade());
    }

    /// Waits until the sink thread has sent and settled everything queued so far (and the
    /// delivery record holds it), or a while at most.
    pub(crate) async fn drain(&self) {
        let sinks = self.sinks.lock().as_ref().and_then(|weak| weak.upgrade());
        let Some(sinks) = sinks else { return };
        let (reply, settled) = tokio::sync::oneshot::channel();
        if sinks.send(Notice::Drained(reply)).await.is_ok() {
            let _ = tokio::time::timeout(DRAIN_LIMIT, settled).await;
        }
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A checkpoint of `partition` through stream sequence `covers_seq` is stored.
    pub(crate) fn checkpoint_stored(&self, partition: u32, covers_seq: u64) {
        self.stored.send_modify(|stored| {
            stored.insert(partition, covers_seq);
        });
    }

    /// Where each partition's newest checkpoint stored by this run goes through, as it
    /// changes.
    pub(crate) fn stored_checkpoints(&self) -> tokio::sync::watch::Receiver<BTreeMap<u32, u64>> {
        self.stored.subscribe()
    }

    fn bump(&self, inner: &Inner) {
        self.metrics.cluster.owned.store(inner.held.len() as u64, Relaxed);
        *self.metrics.cluster.held.lock() = inner.held.iter().map(|(p, h)| (*p, h.epoch)).collect();
        self.changed.send_modify(|n| *n += 1);
    }

    /// The partitions held.
    pub(crate) fn held(&self) -> BTreeMap<u32, Held> {
        self.inner.lock().held.clone()
    }

    /// A partition claimed.
    /// A partition claimed; `took_over` when it ends an earlier holder's tenure.
    pub(crate) fn gain(&self, partition: u32, held: Held, took_over: bool) {
        let mut inner = self.inner.lock();
        inner.held.insert(partition, held);
        inner.releasing.remove(&partition);
        inner.stopped.retain(|p| *p != partition);
        if took_over {
            self.metrics.cluster.takeovers.fetch_add(1, Relaxed);
            inner.claimed_at.insert(partition, Instant::now());
        }
        self.bump(&inner);
    }

    /// A lease rewritten: valid again until `held.valid_until`.
    pub(crate) fn renewed(&self, partition: u32, held: Held) {
        if let Some(h) = self.inner.lock().held.get_mut(&partition) {
            *h = held;
        }
    }

    /// A partition no longer held (released, or found taken by a peer).
    pub(crate) fn lose(&self, partition: u32, taken: bool) {
        let mut inner = self.inner.lock();
        inner.releasing.remove(&partition);
        if inner.held.remove(&partition).is_some() {
            if taken {
                self.metrics.cluster.leases_lost.fetch_add(1, Relaxed);
            }
            self.bump(&inner);
        }
    }

    /// A held partition is to go to a peer: the source checkpoints it, then gives it up
    /// (`lose`) and stops it; meanwhile its lease stays valid, unrenewed.
    pub(crate) fn release(&self, partition: u32) {
        let mut inner = self.inner.lock();
        if inner.held.contains_key(&partition) && inner.releasing.insert(partition) {
            self.bump(&inner);
        }
    }

    /// The held partitions being released.
    pub(crate) fn releasing(&self) -> std::collections::BTreeSet<u32> {
        self.inner.lock().releasing.clone()
    }

    /// The source stopped consuming a partition it no longer holds.
    pub(crate) fn stopped(&self, partition: u32) {
        self.inner.lock().stopped.push(partition);
    }

    /// Whether the source has stopped consuming `partition` (a release waits for it).
    pub(crate) fn has_stopped(&self, partition: u32) -> bool {
        self.inner.lock().stopped.contains(&partition)
    }

    /// Whether this instance may act on `partition` now: held, and its lease not lapsed.
    pub(crate) fn admits(&self, partition: u32, now: Instant) -> bool {
        self.inner
            .lock()
            .held
            .get(&partition)
            .is_some_and(|h| now < h.valid_until)
    }

    /// Whether this instance holds `partition` under `epoch` now, its lease not lapsed: a
    /// pipeline started under that epoch may store its checkpoints (a lost epoch never
    /// comes back: a new claim raises it).
    pub(crate) fn holds_at(&self, partition: u32, epoch: u64) -> bool {
        let now = Instant::now();
        self.inner
            .lock()
            .held
            .get(&partition)
            .is_some_and(|h| h.epoch == epoch && now < h.valid_until)
    }

    /// How long a notification of `partition` still waits because the partition was just
    /// taken over: its previous holder may have sent notifications it has not yet written
    /// into the delivery record (it records them in batches), and a successor going on from
    /// a recent checkpoint computes them again within moments. Waiting `takeover_grace`
    /// after the claim lets those records land, so they are found rather than sent twice.
    pub(crate) fn takeover_wait(&self, partition: Option<u32>) -> Option<Duration> {
        let claimed = *self.inner.lock().claimed_at.get(&partition?)?;
        self.takeover_grace
            .checked_sub(claimed.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// Where a warning computed by `partition` stands here now: the partition held with a
    /// valid lease, held but the lease lapsed (renewals late: it may come back), or not
    /// held. `None` (computed from every partition) stands with the worst of them.
    pub(crate) fn standing(&self, partition: Option<u32>) -> Standing {
        let now = Instant::now();
        let inner = self.inner.lock();
        let standing = |held: Option<&Held>| match held {
            None => Standing::NotHeld,
            Some(h) if now < h.valid_until => Standing::Valid,
            Some(_) => Standing::Lapsed,
        };
        match partition {
            Some(partition) => standing(inner.held.get(&partition)),
            None => (0..self.layout.partitions())
                .map(|p| standing(inner.held.get(&p)))
                .max()
                .unwrap_or(Standing::NotHeld),
        }
    }
}

/// Where a warning stands (see `Ownership::standing`), from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Standing {
    Valid,
    Lapsed,
    NotHeld,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::topic::TopicPattern;

    fn ownership() -> Arc<Ownership> {
        let pattern = TopicPattern::parse("city/{district}/{table}/{device_id}").unwrap();
        Ownership::new(
            "node-1",
            Layout::new("cityops", 4, pattern),
            Duration::from_secs(60),
            Arc::new(Metrics::new()),
        )
    }

    fn held(epoch: u64, valid_for: Duration) -> Held {
        Held {
            revision: 1,
            epoch,
            valid_until: Instant::now() + valid_for,
        }
    }

    #[test]
    fn a_pipeline_may_store_its_checkpoints_only_under_the_epoch_it_started_with() {
        let ownership = ownership();
        assert!(!ownership.holds_at(2, 5), "not held");
        ownership.gain(2, held(5, Duration::from_secs(60)), false);
        assert!(ownership.holds_at(2, 5));
        // Lost, then claimed again: the new claim raised the epoch.
        ownership.lose(2, true);
        ownership.gain(2, held(7, Duration::from_secs(60)), false);
        assert!(!ownership.holds_at(2, 5), "a pipeline of the lost epoch");
        assert!(ownership.holds_at(2, 7));
        // Held at the epoch, but the lease lapsed here (renewals late).
        ownership.renewed(2, held(7, Duration::ZERO));
        assert!(!ownership.holds_at(2, 7), "a lapsed lease");
    }

    #[test]
    fn notifications_of_a_partition_just_taken_over_wait_for_the_grace() {
        let ownership = ownership();
        ownership.gain(1, held(1, Duration::from_secs(60)), false);
        ownership.gain(2, held(4, Duration::from_secs(60)), true);
        assert_eq!(ownership.takeover_wait(Some(1)), None, "claimed fresh");
        let wait = ownership.takeover_wait(Some(2)).expect("taken over");
        assert!(
            wait > Duration::from_secs(59) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert_eq!(ownership.takeover_wait(None), None);
    }
}
