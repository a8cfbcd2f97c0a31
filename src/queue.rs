//! The lock-free handoff from a source to the decode workers: one bounded crossbeam queue
//! per worker, messages routed by table so each table's rows stay in arrival order. The
//! overflow policy lives here and only here: when a queue is full the source waits (for
//! MQTT QoS 1 that means it stops reading the socket and the broker holds the backlog);
//! every such wait is counted. A source that reads several messages at once (one socket
//! read) hands them over as one burst per worker, so a worker wakes once per read rather
//! than once per message. Sources hand over by topic: the handoff finds the table a topic
//! names and the worker that owns it, so no source needs a decoder to route.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use bytes::Bytes;

use crate::flow::{Closed, Ingest, LineAt, LineBlock, LineBurst, Message};
use crate::metrics::Metrics;
use crate::schema::Catalog;
use crate::topic::TopicPattern;

/// The sending side, held by the source.
pub(crate) struct Handoff {
    queues: Vec<Sender<Ingest>>,
    /// Held while an item goes to every queue, so that every queue sees broadcasts (clock
    /// ticks, reroutes, checkpoint cuts) in the same order.
    broadcasting: parking_lot::Mutex<()>,
    /// Which worker owns each table.
    owner_of_table: Vec<usize>,
    /// The topic convention, to find the table a topic names (`worker_for`).
    pattern: TopicPattern,
    /// The tables, by name.
    catalog: Catalog,
    metrics: Arc<Metrics>,
}

impl Handoff {
    /// Makes `workers` queues of `capacity` each; table `t` of the catalog goes to worker
    /// `t % workers`, and `pattern` says which topic segment names the table.
    pub(crate) fn new(
        workers: usize,
        pattern: TopicPattern,
        catalog: Catalog,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> (Self, Vec<Receiver<Ingest>>) {
        let workers = workers.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(capacity)).unzip();
        let owner_of_table = (0..catalog.tables().len()).map(|t| t % workers).collect();
        (
            Handoff {
                queues: senders,
                broadcasting: parking_lot::Mutex::new(()),
                owner_of_table,
                pattern,
                catalog,
                metrics,
            },
            receivers,
        )
    }

    /// The worker that owns a table.
    pub(crate) fn owner(&self, table: usize) -> usize {
        self.owner_of_table.get(table).copied().unwrap_or(0)
    }

    /// The worker that owns the table a topic names, found from the table segment alone (the
    /// topic's bytes as they arrived: no UTF-8 check, no full split; the decoder does both).
    /// A topic naming no known table goes to the first worker, whose decoder dead-letters it;
    /// one that names a table but breaks the pattern elsewhere goes to that table's owner,
    /// whose decoder dead-letters it.
    pub(crate) fn worker_for(&self, topic: &[u8]) -> usize {
        self.pattern
            .table_segment(topic)
            .and_then(|table| self.catalog.index_of_bytes(table))
            .map_or(0, |table| self.owner(table))
    }

    /// Number of workers.
    pub(crate) fn workers(&self) -> usize {
        self.queues.len()
    }

    /// Tables owned by one worker.
    pub(crate) fn tables_of(&self, worker: usize) -> Vec<usize> {
        (0..self.owner_of_table.len())
            .filter(|t| self.owner_of_table[*t] == worker)
            .collect()
    }

    /// Hands one item to a worker, waiting while its queue is full.
    pub(crate) fn send(&self, worker: usize, item: Ingest) -> Result<(), Closed> {
        let queue = &self.queues[worker.min(self.queues.len() - 1)];
        match queue.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(item)) => {
                self.metrics.queue_full_waits.fetch_add(1, Ordering::Relaxed);
                queue.send(item).map_err(|_| Closed)
            }
            Err(TrySendError::Disconnected(_)) => Err(Closed),
        }
    }

    /// Sends a copy of a control item to every worker.
    pub(crate) fn broadcast(&self, make: impl Fn() -> Ingest) -> Result<(), Closed> {
        let _in_order = self.broadcasting.lock();
        (0..self.queues.len()).try_for_each(|w| self.send(w, make()))
    }
}

/// Items gathered per worker into bursts: a burst is full at `Bursts::MAX` items or
/// `Bursts::MAX_BYTES` of payload.
struct Gathered<T> {
    pending: Vec<Vec<T>>,
    /// The payload bytes of each pending burst.
    bytes: Vec<usize>,
}

impl<T> Gathered<T> {
    fn new(workers: usize) -> Self {
        Gathered {
            pending: (0..workers).map(|_| Vec::new()).collect(),
            bytes: vec![0; workers],
        }
    }

    /// Adds an item of `bytes` payload bytes for `worker`; that worker and its burst once
    /// the burst is full.
    fn push(&mut self, worker: usize, item: T, bytes: usize) -> Option<(usize, Vec<T>)> {
        let worker = worker.min(self.pending.len() - 1);
        let burst = &mut self.pending[worker];
        self.bytes[worker] += bytes;
        burst.push(item);
        if burst.len() < Bursts::MAX && self.bytes[worker] < Bursts::MAX_BYTES {
            return None;
        }
        self.bytes[worker] = 0;
        Some((worker, std::mem::replace(burst, Vec::with_capacity(Bursts::MAX))))
    }

    /// Every waiting burst, with its worker, in worker order.
    fn drain(&mut self) -> impl Iterator<Item = (usize, Vec<T>)> + '_ {
        self.bytes.fill(0);
        self.pending
            .iter_mut()
            .enumerate()
            .filter(|(_, burst)| !burst.is_empty())
            .map(|(worker, burst)| (worker, std::mem::take(burst)))
    }
}

/// Messages gathered per worker until the source's read is done (or a burst is full).
pub(crate) struct Bursts {
    gathered: Gathered<Message>,
}

impl Bursts {
    /// The most messages in one burst: bounds what one queue slot holds, so a full queue
    /// still means a bounded backlog (`queue_capacity` × this).
    pub(crate) const MAX: usize = 64;
    /// The most payload bytes in one burst: single readings (a few hundred bytes) go about
    /// 50 at a time, gateway payloads (a hundred readings, 13 KB) one at a time as before
    /// bursts, so a full queue of them holds no more than it did then.
    pub(crate) const MAX_BYTES: usize = 8 << 10;

    pub(crate) fn new(handoff: &Handoff) -> Self {
        Bursts {
            gathered: Gathered::new(handoff.workers()),
        }
    }

    /// Adds a message for `worker`; hands that worker's burst over once it is full.
    pub(crate) fn push(&mut self, handoff: &Handoff, worker: usize, msg: Message) -> Result<(), Closed> {
        let bytes = msg.payload.len();
        match self.gathered.push(worker, msg, bytes) {
            Some((worker, full)) => handoff.send(worker, Ingest::Messages(full)),
            None => Ok(()),
        }
    }

    /// Hands every waiting burst over (a single message travels alone).
    pub(crate) fn flush(&mut self, handoff: &Handoff) -> Result<(), Closed> {
        for (worker, burst) in self.gathered.drain() {
            let item = match <[Message; 1]>::try_from(burst) {
                Ok([msg]) => Ingest::Message(msg),
                Err(burst) => Ingest::Messages(burst),
            };
            handoff.send(worker, item)?;
        }
        Ok(())
    }

    /// Messages gathered and not yet handed over.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.gathered.pending.iter().map(Vec::len).sum()
    }

    /// Whether no message waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.gathered.pending.iter().all(Vec::is_empty)
    }
}

/// Fixture lines gathered per worker, like `Bursts`, all lying in one block of the file.
pub(crate) struct LineBursts {
    block: LineBlock,
    gathered: Gathered<LineAt>,
}

impl LineBursts {
    pub(crate) fn new(handoff: &Handoff) -> Self {
        LineBursts {
            block: LineBlock {
                bytes: Bytes::new(),
                source: Arc::from(""),
            },
            gathered: Gathered::new(handoff.workers()),
        }
    }

    /// The lines that follow lie in `block`: those gathered in the one before go first.
    pub(crate) fn begin(&mut self, handoff: &Handoff, block: &LineBlock) -> Result<(), Closed> {
        self.flush(handoff)?;
        self.block = block.clone();
        Ok(())
    }

    /// Adds a line for `worker`; hands that worker's burst over once it is full.
    pub(crate) fn push(&mut self, handoff: &Handoff, worker: usize, line: LineAt) -> Result<(), Closed> {
        let bytes = line.payload.1 - line.payload.0;
        match self.gathered.push(worker, line, bytes) {
            Some((worker, lines)) => send_lines(handoff, worker, &self.block, lines),
            None => Ok(()),
        }
    }

    /// Hands every waiting burst over.
    pub(crate) fn flush(&mut self, handoff: &Handoff) -> Result<(), Closed> {
        for (worker, lines) in self.gathered.drain() {
            send_lines(handoff, worker, &self.block, lines)?;
        }
        Ok(())
    }
}

/// Hands `worker` its lines of `block`.
fn send_lines(handoff: &Handoff, worker: usize, block: &LineBlock, lines: Vec<LineAt>) -> Result<(), Closed> {
    let burst = LineBurst {
        block: block.bytes.clone(),
        source: Arc::clone(&block.source),
        lines,
    };
    handoff.send(worker, Ingest::Lines(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_makes_the_sender_wait_and_is_counted() {
        let metrics = Arc::new(Metrics::new());
        let (handoff, receivers) = Handoff::new(1, city_topics(), Catalog::builtin(), 1, Arc::clone(&metrics));
        handoff.send(0, Ingest::Tick { now_ms: 1 }).expect("room for one");
        let rx = receivers[0].clone();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            (rx.recv().is_ok(), rx.recv().is_ok())
        });
        handoff.send(0, Ingest::Tick { now_ms: 2 }).expect("waits, then sends");
        assert_eq!(reader.join().expect("reader ran"), (true, true));
        assert_eq!(metrics.queue_full_waits.load(Ordering::Relaxed), 1);
    }

    fn message(n: i64) -> Message {
        Message {
            at_ms: n,
            topic: "city/a/water/1".to_string(),
            payload: bytes::Bytes::new(),
            recorded_invalid: false,
            arrived_ns: 0,
            ..Message::default()
        }
    }

    fn at_ms(item: Ingest) -> Vec<i64> {
        match item {
            Ingest::Message(m) => vec![m.at_ms],
            Ingest::Messages(ms) => ms.iter().map(|m| m.at_ms).collect(),
            other => panic!("expected messages, got {other:?}"),
        }
    }

    #[test]
    fn bursts_keep_order_per_worker_and_hand_over_when_full_or_flushed() {
        let (handoff, receivers) = Handoff::new(2, city_topics(), Catalog::builtin(), 16, Arc::new(Metrics::new()));
        let mut bursts = Bursts::new(&handoff);
        for n in 0..(Bursts::MAX as i64 + 2) {
            bursts.push(&handoff, 0, message(n)).expect("open");
        }
        bursts.push(&handoff, 1, message(1000)).expect("open");
        // The first full burst went at once; the rest waits for the flush.
        assert_eq!(
            at_ms(receivers[0].try_recv().expect("full burst")),
            (0..Bursts::MAX as i64).collect::<Vec<_>>()
        );
        assert!(receivers[0].try_recv().is_err());
        assert_eq!(bursts.len(), 3);
        bursts.flush(&handoff).expect("open");
        assert!(bursts.is_empty());
        assert_eq!(at_ms(receivers[0].try_recv().expect("rest")), vec![64, 65]);
        // A lone message travels as itself.
        assert!(matches!(receivers[1].try_recv(), Ok(Ingest::Message(m)) if m.at_ms == 1000));
    }

    #[test]
    fn a_burst_of_large_payloads_goes_once_it_holds_max_bytes() {
        let (handoff, receivers) = Handoff::new(1, city_topics(), Catalog::builtin(), 16, Arc::new(Metrics::new()));
        let mut bursts = Bursts::new(&handoff);
        let big = |n| Message {
            payload: bytes::Bytes::from(vec![b' '; Bursts::MAX_BYTES / 3 + 1]),
            ..message(n)
        };
        bursts.push(&handoff, 0, big(1)).expect("open");
        bursts.push(&handoff, 0, big(2)).expect("open");
        assert!(receivers[0].try_recv().is_err(), "two thirds wait for more");
        bursts.push(&handoff, 0, big(3)).expect("open");
        assert_eq!(
            at_ms(receivers[0].try_recv().expect("a full burst goes")),
            vec![1, 2, 3]
        );
        bursts.push(&handoff, 0, big(4)).expect("open");
        assert!(receivers[0].try_recv().is_err(), "the count starts again");
    }

    #[test]
    fn tables_are_spread_over_workers() {
        let (handoff, _rx) = Handoff::new(2, city_topics(), Catalog::builtin(), 8, Arc::new(Metrics::new()));
        assert_eq!((handoff.tables_of(0), handoff.tables_of(1)), (vec![0, 2], vec![1, 3]));
    }

    #[test]
    fn a_topic_goes_to_the_worker_owning_its_table_and_an_unknown_one_to_the_first() {
        let catalog = Catalog::builtin();
        let (handoff, _rx) = Handoff::new(2, city_topics(), catalog.clone(), 8, Arc::new(Metrics::new()));
        for (t, table) in catalog.tables().iter().enumerate() {
            let topic = format!("city/chaoyang/{}/dev-1", table.name);
            assert_eq!(handoff.worker_for(topic.as_bytes()), t % 2, "{topic}");
        }
        assert_eq!(handoff.worker_for(b"city/chaoyang/weather/dev-1"), 0);
        assert_eq!(handoff.worker_for(b"not/a/city/topic/at/all"), 0);
        // Broken elsewhere, it goes to its table's owner, which dead-letters it.
        assert_eq!(handoff.worker_for(b"town/chaoyang/traffic"), 1);
    }

    fn city_topics() -> TopicPattern {
        TopicPattern::parse("city/{district}/{table}/{device_id}").expect("a valid pattern")
    }
}
