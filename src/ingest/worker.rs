//! A decode worker: one thread that owns some tables, takes their messages from its queue,
//! decodes them into the tables' batchers, flushes batches when full, when the queue runs
//! dry (adaptive: no waiting when there is nothing to wait for) or on linger, turns clock
//! ticks into idle notices for silent tables, and fans each batch out to the rules that
//! read the table. Counters are updated per message, histograms merged per batch. An empty
//! queue is looked at again every 0.5 ms rather than waited on, so a trickle of messages
//! does not cost the source a wake-up each.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use tokio::sync::mpsc;

use super::decode::Decoder;
use crate::batch::{Batchers, TableBatcher};
use crate::deadletter::LateLetters;
use crate::flow::{Cut, DeadLetter, Ingest, LateRows, LateRowsOut, Received, RuleFanout, TableEvent};
use crate::metrics::{LocalLatency, MERGE_EVERY, Metrics, Stage};
use crate::schema::Catalog;
use crate::time::{EpochMs, wall_now_ms};

/// How long a worker with an empty queue naps before looking again (see `next_item`); it
/// bounds the extra queue wait this adds.
const IDLE_NAP: Duration = Duration::from_micros(500);

/// After this long with an empty queue and no open batch, a worker parks until the next item.
const PARK_AFTER: Duration = Duration::from_millis(20);

/// Under load, linger deadlines and the queue-depth gauge are looked at once per this many
/// messages (a clock read and a shared cache line each), and whenever the queue runs dry.
const CHECK_EVERY: u64 = 64;

/// Settings of the decode stage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeSettings {
    pub batch_rows: usize,
    pub linger: Duration,
    /// How long a batch waits for more rows when the queue is empty (the linger floor).
    pub dry_linger: Duration,
    pub idle_timeout_ms: i64,
}

/// One decode worker's state.
pub(crate) struct DecodeWorker {
    /// This worker's number (its queue's depth is reported under it).
    index: usize,
    decoder: Decoder,
    batchers: Batchers,
    /// Tables this worker owns.
    tables: Vec<usize>,
    /// Per table: the queues of the rules reading it.
    outputs: Vec<Vec<mpsc::Sender<TableEvent>>>,
    /// The id of every rule of the current fan-out (a checkpoint waits for each).
    rules: Arc<[String]>,
    /// Whether the messages now coming refill windows in recovery (`Message::rebuild`).
    rebuilding: bool,
    dead_letters: Sender<DeadLetter>,
    /// Where the rows rules find late go, once each (every batch carries it).
    late_rows: Arc<dyn LateRowsOut>,
    metrics: Arc<Metrics>,
    settings: DecodeSettings,
    /// Virtual arrival of each owned table's latest row.
    last_arrival_ms: Vec<Option<EpochMs>>,
    decode_latency: LocalLatency,
    queue_wait: LocalLatency,
    /// Readings accepted since the counter was last published (at each flush): one shared
    /// atomic per batch, not per message.
    unpublished_accepted: u64,
    messages: u64,
    last_merge: Instant,
    /// Wall clock at `wall_base_at` (ms), to derive the wall time of each message from the
    /// monotonic clock read it needs anyway; refreshed on every tick.
    wall_base_ms: EpochMs,
    wall_base_at: Instant,
}

impl DecodeWorker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        decoder: Decoder,
        catalog: &Catalog,
        tables: Vec<usize>,
        fanout: &RuleFanout,
        dead_letters: Sender<DeadLetter>,
        metrics: Arc<Metrics>,
        settings: DecodeSettings,
    ) -> Self {
        let by_table = catalog
            .tables()
            .iter()
            .enumerate()
            .map(|(i, def)| {
                tables
                    .contains(&i)
                    .then(|| TableBatcher::new(i, Arc::clone(def), settings.batch_rows))
            })
            .collect();
        DecodeWorker {
            index,
            decoder,
            batchers: Batchers {
                by_table,
                last_table: None,
            },
            last_arrival_ms: vec![None; catalog.tables().len()],
            outputs: fanout.for_tables(&tables),
            rules: fanout.rules(),
            rebuilding: false,
            tables,
            late_rows: Arc::new(LateLetters {
                dead_letters: dead_letters.clone(),
                metrics: Arc::clone(&metrics),
            }),
            dead_letters,
            metrics,
            settings,
            decode_latency: LocalLatency::new(),
            queue_wait: LocalLatency::new(),
            unpublished_accepted: 0,
            messages: 0,
            last_merge: Instant::now(),
            wall_base_ms: wall_now_ms(),
            wall_base_at: Instant::now(),
        }
    }

    /// Takes back, from a checkpoint, when each table's last row arrived.
    pub(crate) fn restore_arrivals(&mut self, arrivals: &[(usize, EpochMs)]) {
        for &(table, at) in arrivals {
            if let Some(slot) = self.last_arrival_ms.get_mut(table) {
                *slot = Some(at);
            }
        }
    }

    /// Runs until the source ends (or disappears).
    pub(crate) fn run(mut self, rx: Receiver<Ingest>) {
        loop {
            let item = self.next_item(&rx);
            let dry = rx.is_empty();
            let check = dry || self.messages.is_multiple_of(CHECK_EVERY);
            if check {
                self.metrics.set_queue_depth(self.index, rx.len());
            }
            match item {
                Ok(Ingest::Message(msg)) => {
                    self.on_message(&msg.received(), Instant::now());
                }
                // One clock reading per message: each starts when the one before ended.
                Ok(Ingest::Messages(burst)) => {
                    let mut now = Instant::now();
                    for msg in &burst {
                        now = self.on_message(&msg.received(), now);
                    }
                }
                Ok(Ingest::Lines(burst)) => {
                    let mut now = Instant::now();
                    for msg in burst.received() {
                        now = self.on_message(&msg, now);
                    }
                }
                Ok(Ingest::Tick { now_ms }) => self.on_tick(now_ms),
                Ok(Ingest::Reroute(fanout)) => {
                    // Everything before the reroute goes to the versions that were running.
                    self.flush_all();
                    self.outputs = fanout.for_tables(&self.tables);
                    self.rules = fanout.rules();
                }
                Ok(Ingest::Barrier(cut)) => self.on_barrier(cut),
                Ok(Ingest::End) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Adaptive batching: when nothing more is waiting, a batch that has waited the
            // short floor goes now; under load the queue never drains and batches fill up.
            if check {
                let linger = if rx.is_empty() {
                    self.settings.linger.min(self.settings.dry_linger)
                } else {
                    self.settings.linger
                };
                self.flush_older_than(linger);
            }
        }
        self.flush_all();
        self.publish_accepted();
        self.metrics.set_queue_depth(self.index, 0);
        let arrived_ns = self.metrics.now_ns();
        for table in self.tables.clone() {
            self.send(table, TableEvent::End { arrived_ns });
        }
        self.merge_histograms(true);
    }

    /// The next item, or `Timeout` when the oldest open batch is due. An empty queue is not
    /// waited on but looked at again every `IDLE_NAP`: a worker parked on its queue would
    /// cost the source a wake-up (a futex call, and on a busy machine a preempted broker)
    /// for every message that trickles in. Only after `PARK_AFTER` with nothing at all to
    /// do does the worker park until the next item.
    fn next_item(&self, rx: &Receiver<Ingest>) -> Result<Ingest, RecvTimeoutError> {
        let mut napped = Duration::ZERO;
        loop {
            match rx.try_recv() {
                Ok(item) => return Ok(item),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            let nap = match self.next_linger_deadline() {
                Some(due) if due <= now => return Err(RecvTimeoutError::Timeout),
                Some(due) => IDLE_NAP.min(due - now),
                None if napped < PARK_AFTER => IDLE_NAP,
                None => return rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            std::thread::sleep(nap);
            napped += nap;
        }
    }

    /// Decodes a message the worker took up at `started`; returns when it was done with it.
    fn on_message(&mut self, msg: &Received<'_>, started: Instant) -> Instant {
        if msg.rebuild != self.rebuilding {
            // Refill rows and live rows never share a batch.
            self.flush_all();
            self.rebuilding = msg.rebuild;
        }
        if msg.rebuild {
            self.refill(msg);
            return Instant::now();
        }
        self.messages += 1;
        let now_ns = started.saturating_duration_since(self.metrics.started()).as_nanos() as u64;
        self.queue_wait.record(now_ns.saturating_sub(msg.arrived_ns).max(1));
        self.batchers.last_table = None;
        let metrics = &self.metrics;
        let dead_letters = &self.dead_letters;
        let outcome = self.decoder.decode_received(
            msg,
            self.now_for(msg, started),
            &mut self.batchers,
            &mut |letter: DeadLetter| {
                metrics.add_rejected(letter.reason, 1);
                // The writer only goes away at shutdown; the count above still holds.
                let _ = dead_letters.send(letter);
            },
        );
        self.unpublished_accepted += outcome.accepted;
        let decoded = Instant::now();
        self.decode_latency
            .record(decoded.saturating_duration_since(started).as_nanos().max(1) as u64);
        if let Some(table) = self.batchers.last_table {
            self.last_arrival_ms[table] = Some(msg.at_ms);
            let full = self.batchers.by_table[table]
                .as_ref()
                .is_some_and(|b| b.len() >= self.settings.batch_rows);
            if full {
                self.flush(table);
                return Instant::now();
            }
        }
        decoded
    }

    /// The wall clock a message is judged against (readings too far ahead): when the source
    /// received it, so a replay of the log after a crash judges it as the live run did;
    /// else `now`, the monotonic clock as it was read for the message.
    fn now_for(&self, msg: &Received<'_>, now: Instant) -> EpochMs {
        if msg.received_ms > 0 {
            return msg.received_ms;
        }
        self.wall_base_ms + now.saturating_duration_since(self.wall_base_at).as_millis() as EpochMs
    }

    /// Decodes a message recovery feeds again to refill open windows: its rows go to the
    /// batches, and nothing is counted or dead-lettered (the run before the crash did that).
    fn refill(&mut self, msg: &Received<'_>) {
        self.batchers.last_table = None;
        let now_ms = self.now_for(msg, Instant::now());
        self.decoder
            .decode_received(msg, now_ms, &mut self.batchers, &mut |_| {});
        if let Some(table) = self.batchers.last_table {
            let full = self.batchers.by_table[table]
                .as_ref()
                .is_some_and(|b| b.len() >= self.settings.batch_rows);
            if full {
                self.flush(table);
            }
        }
    }

    /// A checkpoint's cut: every row so far goes out, then the cut, to every rule of each
    /// owned table.
    fn on_barrier(&mut self, cut: Cut) {
        self.flush_all();
        for table in self.tables.clone() {
            let event = TableEvent::Barrier {
                cut,
                table,
                last_arrival_ms: self.last_arrival_ms[table],
                rules: Arc::clone(&self.rules),
            };
            self.send(table, event);
        }
    }

    /// Silent tables advance their watermark by the clock.
    fn on_tick(&mut self, now_ms: EpochMs) {
        self.wall_base_ms = wall_now_ms();
        self.wall_base_at = Instant::now();
        for table in self.tables.clone() {
            let Some(last) = self.last_arrival_ms[table] else {
                continue;
            };
            if now_ms - last >= self.settings.idle_timeout_ms {
                self.flush(table);
                let arrived_ns = self.metrics.now_ns();
                self.send(
                    table,
                    TableEvent::Idle {
                        table,
                        now_ms,
                        last_arrival_ms: last,
                        arrived_ns,
                    },
                );
            }
        }
    }

    /// When the oldest waiting batch is due: the dry-queue floor, so an idle queue still
    /// flushes soon after its last row.
    fn next_linger_deadline(&self) -> Option<Instant> {
        let wait = self.settings.linger.min(self.settings.dry_linger);
        self.batchers
            .by_table
            .iter()
            .flatten()
            .filter_map(|b| b.started())
            .min()
            .map(|s| s + wait)
    }

    fn flush_older_than(&mut self, linger: Duration) {
        let now = Instant::now();
        for table in self.tables.clone() {
            let due = self.batchers.by_table[table]
                .as_ref()
                .and_then(|b| b.started())
                .is_some_and(|s| now.duration_since(s) >= linger);
            if due {
                self.flush(table);
            }
        }
    }

    fn flush_all(&mut self) {
        for table in self.tables.clone() {
            self.flush(table);
        }
    }

    fn flush(&mut self, table: usize) {
        let Some(batcher) = self.batchers.by_table[table].as_mut() else {
            return;
        };
        if batcher.is_empty() {
            return;
        }
        let lingered = batcher.started().map(|s| s.elapsed().as_nanos() as u64).unwrap_or(0);
        match batcher.flush() {
            Ok(mut batch) => {
                batch.late = LateRows::new(Arc::clone(&self.late_rows));
                self.metrics.record(Stage::BatchLinger, lingered);
                self.send(table, TableEvent::Batch(Arc::new(batch)));
            }
            Err(e) => {
                // Builders follow the table schema, so this is an internal fault: say so loudly.
                tracing::error!(table, error = %e, "could not build a batch; its rows are lost (an internal fault: report it as a bug with this error)");
            }
        }
        self.publish_accepted();
        self.merge_histograms(false);
    }

    fn publish_accepted(&mut self) {
        let accepted = std::mem::take(&mut self.unpublished_accepted);
        if accepted > 0 {
            self.metrics.readings_accepted.fetch_add(accepted, Ordering::Relaxed);
        }
    }

    fn send(&self, table: usize, event: TableEvent) {
        for rule in &self.outputs[table] {
            // A rule's queue closes only if its task died; the others still get the event.
            let _ = rule.blocking_send(event.clone());
        }
    }

    /// Merges the local histograms into the shared ones: when `now`, or every `MERGE_EVERY`.
    fn merge_histograms(&mut self, now: bool) {
        if now || self.last_merge.elapsed() >= MERGE_EVERY {
            self.metrics.merge(Stage::Decode, &mut self.decode_latency);
            self.metrics.merge(Stage::QueueWait, &mut self.queue_wait);
            self.last_merge = Instant::now();
        }
    }
}
