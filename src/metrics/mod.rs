//! Counters and HdrHistogram latency recorders for every stage, shared by the pipeline
//! through one `Arc<Metrics>`. Stages update counters per message or batch and record
//! latencies into thread-local histograms that they merge here per batch; nothing is
//! locked per row. `rule_board` keeps each rule's live health; the Prometheus names are
//! written where `/metrics` renders them (`http::prometheus`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::flow::Reason;
use crate::level::Level;

mod cluster;
mod rule_board;

pub use cluster::ClusterMetrics;
pub use rule_board::RuleHealthView;
pub(crate) use rule_board::{RuleBoard, RuleHealth};

/// The stages whose latency is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Decoding one message into rows.
    Decode,
    /// From a message entering the decode queue to a decode worker taking it.
    QueueWait,
    /// From a batch's first row to the batch being flushed.
    BatchLinger,
    /// One rule handling one batch (window routing, or a row rule's evaluation).
    RuleEval,
    /// From a window's close to its results being ready.
    WindowClose,
    /// Handing one warning to the sinks.
    SinkSend,
    /// Warning emitted − arrival of the last event it needed.
    Detection,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Decode,
        Stage::QueueWait,
        Stage::BatchLinger,
        Stage::RuleEval,
        Stage::WindowClose,
        Stage::SinkSend,
        Stage::Detection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::QueueWait => "queue_wait",
            Stage::BatchLinger => "batch_linger",
            Stage::RuleEval => "rule_eval",
            Stage::WindowClose => "window_close",
            Stage::SinkSend => "sink_send",
            Stage::Detection => "detection",
        }
    }
}

/// A latency histogram in nanoseconds, 1 ns to 1 hour at 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 3_600_000_000_000, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e}"),
    }
}

/// How often a stage's thread-local samples are merged into the shared histogram (and at
/// its end), so the shared lock is not taken per sample.
pub(crate) const MERGE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Samples a thread keeps as a list before it spills them into a histogram of its own.
const SAMPLES_HELD: usize = 4096;

/// One thread's latency samples (ns) between merges. A few samples are merged one by one:
/// a histogram covering 1 ns to 1 hour holds some 35,000 counters, and adding or clearing
/// one walks them all. Past `SAMPLES_HELD` samples, they go into a local histogram instead.
#[derive(Debug, Default)]
pub struct LocalLatency {
    samples: Vec<u64>,
    spill: Option<Histogram<u64>>,
}

impl LocalLatency {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, nanos: u64) {
        let nanos = nanos.max(1);
        if self.samples.len() < SAMPLES_HELD {
            self.samples.push(nanos);
        } else {
            let _ = self.spill.get_or_insert_with(new_histogram).record(nanos);
        }
    }

    /// Every sample into `into`; leaves this empty.
    fn drain_into(&mut self, into: &mut Histogram<u64>) {
        for nanos in self.samples.drain(..) {
            let _ = into.record(nanos);
        }
        if let Some(spill) = self.spill.as_mut().filter(|h| !h.is_empty()) {
            let _ = into.add(&*spill);
            spill.reset();
        }
    }

    fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.spill.as_ref().is_none_or(|h| h.is_empty())
    }
}

/// Decode workers whose queue depth is reported (more still work, unreported).
pub(crate) const MAX_DECODE_WORKERS: usize = 64;

/// Everything the pipeline counts and times.
pub struct Metrics {
    start: Instant,
    /// Raised by the source for every message: on a cache line of its own, apart from
    /// `start`, which every thread reads for every message (sharing one, each raise cost
    /// the reader a twentieth of its time).
    pub messages_in: CachePadded<AtomicU64>,
    pub readings_accepted: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
    late: Mutex<BTreeMap<(String, String), u64>>,
    pub windows_closed: AtomicU64,
    warnings: [AtomicU64; Level::ALL.len()],
    pub resolved: AtomicU64,
    pub rule_errors: AtomicU64,
    pub queue_full_waits: AtomicU64,
    /// Warnings a sink failed to deliver.
    pub sink_errors: AtomicU64,
    /// Messages waiting in each decode queue (gauge, updated by its worker).
    queue_depths: [AtomicU64; MAX_DECODE_WORKERS],
    /// How many decode workers report a depth.
    decode_workers: AtomicU64,
    /// Webhook: warnings waiting in the spool, delivered, retried sends, refused by the
    /// receiver, and not spooled because the spool was full.
    pub webhook_spooled: AtomicU64,
    pub webhook_delivered: AtomicU64,
    pub webhook_retries: AtomicU64,
    pub webhook_refused: AtomicU64,
    pub webhook_spool_full: AtomicU64,
    /// Alertmanager format: firing alerts sent again so the receiver keeps them active.
    pub webhook_resent: AtomicU64,
    /// What `/health/ready` checks.
    pub readiness: Readiness,
    /// Whether the live MQTT source is connected now.
    pub mqtt_connected: AtomicBool,
    /// Whether the broker has granted the live source's subscriptions (since the last connect).
    pub mqtt_subscribed: AtomicBool,
    /// Failed connection attempts and dropped connections of the live source.
    pub mqtt_connection_errors: AtomicU64,
    /// Connections closed right after they were accepted, again and again: another client
    /// has the same client id.
    pub mqtt_takeovers: AtomicU64,
    /// Total time the live source spent disconnected, in ms.
    pub mqtt_outage_ms: AtomicU64,
    /// Rule versions swapped in (or rules added or removed) by hot reload.
    pub rules_reloaded: AtomicU64,
    /// Rule changes rejected by hot reload (the old version kept running).
    pub reloads_rejected: AtomicU64,
    stages: [Mutex<Histogram<u64>>; Stage::ALL.len()],
    /// Each rule's live counters (`/api/rules`).
    pub rules: RuleBoard,
    /// The durable state's log, checkpoints and recovery.
    pub state: StateMetrics,
    /// The operations desk's counters.
    pub(crate) desk: DeskCounters,
    /// Partitions, leases and lag when running on NATS JetStream.
    pub cluster: ClusterMetrics,
}

/// The desk's counters, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct DeskCounters {
    /// Operator actions accepted.
    pub(crate) actions: AtomicU64,
    /// Escalation notifications sent (deadlines passed).
    pub(crate) escalations: AtomicU64,
    /// Notifications a silence held back from the paging sinks.
    pub(crate) withheld: AtomicU64,
    /// Journal writes or syncs that failed.
    pub(crate) journal_errors: AtomicU64,
}

/// Whether the run is ready for its work, as a supervisor asks `/health/ready`: the rules
/// are loaded, recovery from the state directory is done, and a live source is connected
/// to its broker with its subscriptions granted. The pipeline sets them as it starts.
#[derive(Debug, Default)]
pub struct Readiness {
    pub rules_loaded: AtomicBool,
    /// Recovery is done (set at once when the run keeps no state).
    pub recovered: AtomicBool,
    /// The source is a live broker, so readiness needs its connection.
    pub live_source: AtomicBool,
}

impl Metrics {
    /// The readiness checks by name (`broker` only for a live source), and whether all pass.
    pub fn ready(&self) -> (bool, Vec<(&'static str, bool)>) {
        let r = &self.readiness;
        let mut checks = vec![
            ("rules_loaded", r.rules_loaded.load(Ordering::Relaxed)),
            ("recovered", r.recovered.load(Ordering::Relaxed)),
        ];
        if r.live_source.load(Ordering::Relaxed) {
            let connected = self.mqtt_connected.load(Ordering::Relaxed) && self.mqtt_subscribed.load(Ordering::Relaxed);
            checks.push(("broker_connected", connected));
        }
        (checks.iter().all(|(_, ok)| *ok), checks)
    }
}

/// What the durable state did (all zero when the run keeps no state).
#[derive(Debug, Default)]
pub struct StateMetrics {
    /// Whether the run keeps state (`--state`).
    pub enabled: AtomicBool,
    /// Bytes of the write-ahead log on disk.
    pub log_bytes: AtomicU64,
    /// Group commits (one fdatasync each) and the messages they made durable.
    pub log_commits: AtomicU64,
    pub log_messages: AtomicU64,
    /// Failed log writes (a full disk); acks wait while this is set.
    pub log_errors: AtomicU64,
    pub log_stalled: AtomicBool,
    pub checkpoints: AtomicU64,
    /// Checkpoints not written (a sink that could not confirm, a failed write).
    pub checkpoint_failures: AtomicU64,
    /// The last checkpoint: when (epoch ms), how big, how long it took to write (µs).
    pub last_checkpoint_ms: AtomicU64,
    pub last_checkpoint_bytes: AtomicU64,
    pub last_checkpoint_us: AtomicU64,
    /// Recovery at start: how long (ms), messages replayed after the checkpoint, and
    /// messages read again to refill open windows.
    pub recovery_ms: AtomicU64,
    pub recovered_messages: AtomicU64,
    pub refilled_messages: AtomicU64,
    /// Notifications recovery computed again that the sinks already had (not re-sent).
    pub resends_skipped: AtomicU64,
    /// Messages the broker sent again that the log already held (acked, not logged twice).
    pub redeliveries_skipped: AtomicU64,
    /// Retained alert states fixed at start: stale ones cleared, missing ones published.
    pub retained_cleared: AtomicU64,
    pub retained_published: AtomicU64,
    /// Connects where the broker had lost the session cityops expected it to keep.
    pub session_lost: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("messages_in", &self.messages_in)
            .field("readings_accepted", &self.readings_accepted)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            start: Instant::now(),
            messages_in: CachePadded::new(AtomicU64::new(0)),
            readings_accepted: AtomicU64::new(0),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            late: Mutex::new(BTreeMap::new()),
            windows_closed: AtomicU64::new(0),
            warnings: std::array::from_fn(|_| AtomicU64::new(0)),
            resolved: AtomicU64::new(0),
            rule_errors: AtomicU64::new(0),
            queue_full_waits: AtomicU64::new(0),
            sink_errors: AtomicU64::new(0),
            queue_depths: std::array::from_fn(|_| AtomicU64::new(0)),
            decode_workers: AtomicU64::new(0),
            webhook_spooled: AtomicU64::new(0),
            webhook_delivered: AtomicU64::new(0),
            webhook_retries: AtomicU64::new(0),
            webhook_refused: AtomicU64::new(0),
            webhook_spool_full: AtomicU64::new(0),
            webhook_resent: AtomicU64::new(0),
            readiness: Readiness::default(),
            mqtt_connected: AtomicBool::new(false),
            mqtt_subscribed: AtomicBool::new(false),
            mqtt_connection_errors: AtomicU64::new(0),
            mqtt_takeovers: AtomicU64::new(0),
            mqtt_outage_ms: AtomicU64::new(0),
            rules_reloaded: AtomicU64::new(0),
            reloads_rejected: AtomicU64::new(0),
            stages: std::array::from_fn(|_| Mutex::new(new_histogram())),
            rules: RuleBoard::default(),
            state: StateMetrics::default(),
            desk: DeskCounters::default(),
            cluster: ClusterMetrics::default(),
        }
    }

    /// Records decode queue `worker`'s depth.
    pub fn set_queue_depth(&self, worker: usize, depth: usize) {
        if let Some(slot) = self.queue_depths.get(worker) {
            slot.store(depth as u64, Ordering::Relaxed);
            self.decode_workers.fetch_max(worker as u64 + 1, Ordering::Relaxed);
        }
    }

    /// The latest depth of every decode queue.
    pub fn queue_depths(&self) -> Vec<u64> {
        let workers = (self.decode_workers.load(Ordering::Relaxed) as usize).min(MAX_DECODE_WORKERS);
        self.queue_depths[..workers]
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect()
    }

    /// Nanoseconds since the pipeline started: the one wall-clock scale of arrival stamps.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// When the pipeline started.
    pub fn started(&self) -> Instant {
        self.start
    }

    pub fn add_rejected(&self, reason: Reason, n: u64) {
        self.rejected[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Rejections by decode (every reason but `late`, which is per rule).
    pub fn rejected_total(&self) -> u64 {
        Reason::ALL
            .iter()
            .filter(|r| **r != Reason::Late)
            .map(|r| self.rejected(*r))
            .sum()
    }

    pub fn add_late(&self, table: &str, rule: &str, n: u64) {
        *self
            .late
            .lock()
            .entry((table.to_string(), rule.to_string()))
            .or_insert(0) += n;
    }

    /// Late rows per (table, rule).
    pub fn late(&self) -> BTreeMap<(String, String), u64> {
        self.late.lock().clone()
    }

    pub fn add_warning(&self, level: Level) {
        self.warnings[level.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Firing notifications (including escalations) at a level.
    pub fn warnings(&self, level: Level) -> u64 {
        self.warnings[level.index()].load(Ordering::Relaxed)
    }

    /// Records one latency sample.
    pub fn record(&self, stage: Stage, nanos: u64) {
        let _ = self.stages[stage as usize].lock().record(nanos.max(1));
    }

    /// Merges a thread's samples of a stage (then clears them).
    pub fn merge(&self, stage: Stage, local: &mut LocalLatency) {
        if local.is_empty() {
            return;
        }
        local.drain_into(&mut self.stages[stage as usize].lock());
    }

    /// A copy of one stage's histogram.
    pub fn histogram(&self, stage: Stage) -> Histogram<u64> {
        self.stages[stage as usize].lock().clone()
    }
}
