//! The live source's QoS 1 acknowledgements, and when they go out. An ack waits until its
//! message is in a decode queue; then the waiting acks are sent together once `ack_batch`
//! of them wait or the oldest has waited `ack_delay`. Fewer, larger ack writes let the
//! broker answer with larger bursts: on the 2-core test machine this cut the MQTT thread's
//! CPU per message by more than half (docs/PERFORMANCE.md). The batch should stay below the
//! broker's in-flight window (Mosquitto's `max_inflight_messages` is 20 by default); where
//! it does not, the delay bounds how long the broker waits.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rumqttc::Publish;

/// Acks of messages already in the pipeline, oldest first.
#[derive(Debug)]
pub(crate) struct PendingAcks {
    waiting: VecDeque<Publish>,
    /// When the oldest waiting ack was added.
    oldest: Option<Instant>,
    batch: usize,
    delay: Duration,
}

impl PendingAcks {
    /// Acks sent `batch` at a time (at least 1), or after `delay`.
    pub(crate) fn new(batch: usize, delay: Duration) -> Self {
        PendingAcks {
            waiting: VecDeque::new(),
            oldest: None,
            batch: batch.max(1),
            delay,
        }
    }

    /// Holds the ack of a message that is now in the pipeline.
    pub(crate) fn push(&mut self, publish: Publish, now: Instant) {
        self.oldest.get_or_insert(now);
        self.waiting.push_back(publish);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// When the waiting acks must go out at the latest.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|at| at + self.delay)
    }

    /// Whether the waiting acks should go out now: a full batch, or the deadline passed.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.waiting.len() >= self.batch || self.deadline().is_some_and(|deadline| deadline <= now)
    }

    /// Hands over every waiting ack, oldest first.
    pub(crate) fn take(&mut self) -> VecDeque<Publish> {
        self.oldest = None;
        std::mem::take(&mut self.waiting)
    }

    /// Forgets the waiting acks (their connection is gone; the broker redelivers).
    pub(crate) fn clear(&mut self) {
        self.oldest = None;
        self.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    fn publish(pkid: u16) -> Publish {
        let mut p = Publish::new("city/a/water/w1", QoS::AtLeastOnce, Vec::new());
        p.pkid = pkid;
        p
    }

    #[test]
    fn acks_go_out_at_a_full_batch_or_at_the_deadline_oldest_first() {
        let start = Instant::now();
        let mut acks = PendingAcks::new(3, Duration::from_millis(1));
        assert!(!acks.due(start) && acks.deadline().is_none());
        acks.push(publish(1), start);
        acks.push(publish(2), start + Duration::from_micros(500));
        // Two of three, the oldest 0.9 ms old: not yet; at 1 ms: due.
        assert!(!acks.due(start + Duration::from_micros(900)));
        assert!(acks.due(start + Duration::from_millis(1)));
        assert_eq!(acks.deadline(), Some(start + Duration::from_millis(1)));
        acks.push(publish(3), start + Duration::from_micros(600));
        assert!(
            acks.due(start + Duration::from_micros(600)),
            "a full batch goes at once"
        );
        let sent: Vec<u16> = acks.take().into_iter().map(|p| p.pkid).collect();
        assert_eq!(sent, [1, 2, 3]);
        assert!(acks.is_empty() && acks.deadline().is_none());
        // The next ack starts a new deadline.
        let later = start + Duration::from_millis(5);
        acks.push(publish(4), later);
        assert_eq!(acks.deadline(), Some(later + Duration::from_millis(1)));
        acks.clear();
        assert!(acks.is_empty() && !acks.due(later + Duration::from_secs(1)));
    }

    #[test]
    fn a_batch_of_one_sends_every_ack_at_once() {
        let now = Instant::now();
        let mut acks = PendingAcks::new(0, Duration::from_secs(1));
        acks.push(publish(7), now);
        assert!(acks.due(now));
    }
}
