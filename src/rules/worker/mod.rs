//! Evaluating one rule over its table's batches, as one task per rule (rules run in
//! parallel). Window rules route each batch's rows to their open windows, whose plan
//! executions are fed as rows arrive; when the watermark passes a window's end its stream
//! is ended and its result rows are ready within a millisecond. Rows failing the rule's
//! WHERE clause are dropped before any plan sees them.
//! Row rules evaluate each batch and step the lifecycle row by row in arrival order.
//! A failing evaluation is counted and reported; the rule and the others go on.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{TimestampMillisecondType, UInt32Type};
use datafusion::error::DataFusionError;
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use futures::channel::mpsc as feed_channel;
use tokio::sync::mpsc;

use super::compile::{CompiledRule, EngineColumns, RuleKind};
use super::devices::{DeviceWatch, Snapshot};
use super::health::RuleHealth;
use super::output::{key_of, level_of, result_json, row_json, values_of};
use super::session::{ClosedSession, Sessions};
use crate::alert::lifecycle::{CleanStep, Evidence, FiringAlert, Lifecycle, Transition};
use crate::alert::warning::Warning;
use crate::batch::{TableBatch, TableEvent};
use crate::deadletter::{DeadLetter, Reason};
use crate::metrics::{LocalLatency, MERGE_EVERY, Metrics, Stage};
use crate::time::{EpochMs, wall_now_ms};
use crate::window::WindowClock;

mod rows;
mod sessions;
mod snapshots;
mod windows;

use windows::Windows;

/// Which clock stamps `detected_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectionClock {
    /// Event time (replay and tests): deterministic for a given fixture.
    EventTime,
    /// Wall-clock time (live sources).
    Wall,
}

/// The result rows of one closed window (captured for rule tests when asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub rule: String,
    pub window_start: EpochMs,
    pub window_end: EpochMs,
    /// Every output column of every result row.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// What a rule worker needs from the pipeline.
#[derive(Clone)]
pub struct WorkerContext {
    /// Where closed windows' result rows go, when captured.
    pub results: Option<mpsc::UnboundedSender<WindowResult>>,
    pub metrics: Arc<Metrics>,
    pub warnings: mpsc::Sender<Warning>,
    pub dead_letters: crossbeam_channel::Sender<DeadLetter>,
    pub clock: DetectionClock,
    pub table_name: String,
    /// Names of every table (the `devices` table lists devices of all of them).
    pub table_names: Vec<String>,
    /// How many tables feed this rule: it stops after an End from each.
    pub inputs: usize,
}

/// What a rule worker reports when its input ends.
#[derive(Debug, Clone)]
pub struct RuleReport {
    pub rule: String,
    pub firing: Vec<FiringAlert>,
    pub errors: u64,
    /// The latest evaluation error, when there was one.
    pub last_error: Option<String>,
}

/// Where and when a result row was found: the part of a breach the caller knows.
#[derive(Debug, Clone, Copy)]
struct Found {
    window: Option<(EpochMs, EpochMs)>,
    /// Event time of the breach (a window's or session's start, a snapshot's time).
    event_ms: EpochMs,
    detected_ms: EpochMs,
    arrived_ns: u64,
}

/// The evaluation state of one rule.
pub struct RuleWorker {
    rule: Arc<CompiledRule>,
    lifecycle: Lifecycle,
    windows: Option<Windows>,
    sessions: Option<Sessions>,
    devices: Option<DeviceWatch>,
    ctx: WorkerContext,
    errors: u64,
    last_error: Option<String>,
    eval_latency: LocalLatency,
    detection_latency: LocalLatency,
    /// Max `ts` of the rows seen (stamps the resolutions of a retired rule).
    last_event_ms: Option<EpochMs>,
    /// A version swapped in mid-stream judges only windows (and sessions) that start at or
    /// after its first row, so every window it judges saw all of its rows.
    judge_from: JudgeFrom,
    /// This rule's live counters (`/api/rules`).
    health: Arc<RuleHealth>,
    last_merge: Instant,
}

/// Which windows a rule version judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JudgeFrom {
    /// Every window (the version started with the stream).
    Start,
    /// Swapped in mid-stream; waits for its first row.
    FirstRow,
    /// Windows starting at or after this event time.
    Ts(EpochMs),
}

impl JudgeFrom {
    /// Whether a window starting at `start` is this version's to judge. A session is whole
    /// only if the version also saw the `lead` (its gap) before it, hence the lead.
    fn covers(self, start: EpochMs, lead: i64) -> bool {
        match self {
            JudgeFrom::Start => true,
            JudgeFrom::FirstRow => false,
            JudgeFrom::Ts(from) => start >= from.saturating_add(lead),
        }
    }
}

impl RuleWorker {
    pub fn new(rule: Arc<CompiledRule>, ctx: WorkerContext) -> Self {
        let windows = match rule.kind {
            RuleKind::Window(spec) => Some(Windows {
                clock: WindowClock::new(spec, rule.lateness_ms),
                open: BTreeMap::new(),
                judged_through: None,
                row_max_ts: None,
            }),
            RuleKind::Row | RuleKind::Session { .. } | RuleKind::Devices => None,
        };
        let devices = (rule.kind == RuleKind::Devices).then(|| DeviceWatch::new(ctx.table_names.clone()));
        let sessions = match rule.kind {
            RuleKind::Session { gap_ms } => Some(Sessions::new(gap_ms, rule.lateness_ms, rule.session_key.clone())),
            _ => None,
        };
        let health = ctx.metrics.rules.register(
            &rule.id,
            &rule.version,
            rule.kind.name(),
            &rule.info.table,
            &rule.info.description,
        );
        RuleWorker {
            last_merge: Instant::now(),
            health,
            sessions,
            devices,
            lifecycle: Lifecycle::new(&rule.id, rule.policy),
            rule,
            windows,
            ctx,
            errors: 0,
            last_error: None,
            eval_latency: LocalLatency::new(),
            detection_latency: LocalLatency::new(),
            last_event_ms: None,
            judge_from: JudgeFrom::Start,
        }
    }

    /// Takes over from this rule's previous version, which has drained its input: its
    /// alerts (when both key alerts by the same columns; otherwise the old alerts are
    /// resolved), its error count and, for `devices` rules, the devices' last-seen times.
    /// Window and session state is not carried: the plan changed, so this version judges
    /// only windows that start after it took over.
    pub async fn take_over(&mut self, mut previous: RuleWorker) {
        let key_names = |w: &RuleWorker| w.rule.layout.key.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        if key_names(self) == key_names(&previous) {
            self.lifecycle.adopt(std::mem::replace(
                &mut previous.lifecycle,
                Lifecycle::new(&previous.rule.id, previous.rule.policy),
            ));
        } else {
            previous.retire().await;
        }
        self.errors += previous.errors;
        self.last_error = previous.last_error.take();
        self.last_event_ms = previous.last_event_ms;
        if self.devices.is_some() && previous.devices.is_some() {
            self.devices = previous.devices.take();
        }
        self.judge_from = JudgeFrom::FirstRow;
    }

    /// Resolves every firing alert: the rule was removed (or replaced by a version that
    /// keys its alerts differently).
    pub async fn retire(&mut self) {
        let event_ms = self.last_event_ms.unwrap_or_else(wall_now_ms);
        let step = CleanStep {
            window: None,
            detected_ms: self.detected(event_ms),
            arrived_ns: self.ctx.metrics.now_ns(),
        };
        for t in self.lifecycle.retire(step) {
            self.emit(t).await;
        }
        self.merge_histograms(true);
    }

    /// Merges the local latency histograms into the shared ones: when `now`, or when the
    /// last merge is `MERGE_EVERY` old.
    fn merge_histograms(&mut self, now: bool) {
        if now || self.last_merge.elapsed() >= MERGE_EVERY {
            self.ctx.metrics.merge(Stage::RuleEval, &mut self.eval_latency);
            self.ctx.metrics.merge(Stage::Detection, &mut self.detection_latency);
            self.last_merge = Instant::now();
        }
    }

    /// What the rule reports at the end of a run.
    pub fn report(&self) -> RuleReport {
        RuleReport {
            rule: self.rule.id.clone(),
            firing: self.lifecycle.firing(),
            errors: self.errors,
            last_error: self.last_error.clone(),
        }
    }

    /// Notes the event time of a batch's rows.
    fn observe_times(&mut self, batch: &RecordBatch) {
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let (Some(min), Some(max)) = (datafusion::arrow::compute::min(ts), datafusion::arrow::compute::max(ts)) else {
            return;
        };
        self.last_event_ms = self.last_event_ms.max(Some(max));
        if self.judge_from == JudgeFrom::FirstRow {
            self.judge_from = JudgeFrom::Ts(min);
        }
    }

    /// Consumes the table's events until the end of input (or until its queue is dropped,
    /// when a new version takes over); hands the worker back for `take_over` or `report`.
    pub async fn run(mut self, mut rx: mpsc::Receiver<TableEvent>) -> RuleWorker {
        let mut ends = 0;
        while let Some(event) = rx.recv().await {
            match event {
                TableEvent::Batch(batch) => {
                    let started = Instant::now();
                    self.observe_times(&batch.batch);
                    let result = match self.rule.kind {
                        RuleKind::Row => self.on_row_batch(&batch).await,
                        RuleKind::Window(_) => self.on_window_batch(&batch).await,
                        RuleKind::Session { .. } => self.on_session_batch(&batch).await,
                        RuleKind::Devices => self.on_devices_batch(&batch).await,
                    };
                    if let Err(e) = result {
                        self.fail(&e);
                    }
                    let took_ns = started.elapsed().as_nanos().max(1) as u64;
                    self.eval_latency.record(took_ns);
                    self.note_batch(batch.batch.num_rows(), took_ns);
                    self.merge_histograms(false);
                }
                TableEvent::Idle {
                    table,
                    now_ms,
                    last_arrival_ms,
                    arrived_ns,
                } => {
                    self.on_idle(table, now_ms, last_arrival_ms, arrived_ns).await;
                }
                TableEvent::End { arrived_ns } => {
                    ends += 1;
                    if ends < self.ctx.inputs {
                        continue;
                    }
                    self.on_end(arrived_ns).await;
                    self.note_state();
                    break;
                }
            }
        }
        self.merge_histograms(true);
        self
    }

    /// Publishes the rule's counters after a batch.
    fn note_batch(&self, rows: usize, took_ns: u64) {
        let health = &self.health;
        health.rows_in.fetch_add(rows as u64, Ordering::Relaxed);
        health.batches.fetch_add(1, Ordering::Relaxed);
        health.eval_ns.fetch_add(took_ns, Ordering::Relaxed);
        self.note_state();
    }

    /// Publishes the state the rule holds now and its live alerts.
    fn note_state(&self) {
        let health = &self.health;
        let state = match (&self.windows, &self.sessions, &self.devices) {
            (Some(windows), _, _) => windows.open.len(),
            (_, Some(sessions), _) => sessions.open_count(),
            (_, _, Some(devices)) => devices.watched(),
            _ => 0,
        };
        health.state_size.store(state as u64, Ordering::Relaxed);
        health.alerts.store(self.lifecycle.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn fail(&mut self, error: &DataFusionError) {
        self.errors += 1;
        self.last_error = Some(error.strip_backtrace());
        self.health.failed(&error.strip_backtrace());
        self.ctx.metrics.rule_errors.fetch_add(1, Ordering::Relaxed);
        // The first failures are logged in full; later ones are counted (see the summary).
        if self.errors <= 3 {
            tracing::warn!(rule = %self.rule.id, error = %error.strip_backtrace(), "rule evaluation failed; the rule goes on");
        }
    }

    pub(super) fn dead_letter_late(&self, input: &TableBatch, late: &[u32]) {
        if late.is_empty() {
            return;
        }
        self.ctx
            .metrics
            .add_late(&self.ctx.table_name, &self.rule.id, late.len() as u64);
        for &row in late {
            let row = row as usize;
            let _ = self.ctx.dead_letters.send(DeadLetter {
                reason: Reason::Late,
                detail: format!("every window of rule {} holding this row had closed", self.rule.id),
                topic: input.topics.value(row).to_string(),
                at: input.at_ms[row],
                rule: Some(self.rule.id.clone()),
                payload: row_json(&input.batch, row),
            });
        }
    }

    async fn on_idle(&mut self, table: usize, now_ms: EpochMs, last_arrival_ms: EpochMs, arrived_ns: u64) {
        match self.rule.kind {
            RuleKind::Row => {}
            RuleKind::Window(_) => self.idle_windows(now_ms, last_arrival_ms, arrived_ns).await,
            RuleKind::Session { .. } => self.idle_sessions(now_ms, last_arrival_ms, arrived_ns).await,
            RuleKind::Devices => self.idle_devices(table, now_ms, last_arrival_ms, arrived_ns).await,
        }
    }

    async fn on_end(&mut self, arrived_ns: u64) {
        match self.rule.kind {
            RuleKind::Row | RuleKind::Devices => {}
            RuleKind::Window(_) => self.end_windows(arrived_ns).await,
            RuleKind::Session { .. } => self.end_sessions(arrived_ns).await,
        }
    }

    // ---- shared ----------------------------------------------------------------------

    /// Sends a window's result rows to the capture, when one is attached.
    pub(super) fn capture(
        &self,
        start: EpochMs,
        end: EpochMs,
        rows: impl Iterator<Item = (usize, usize)>,
        output: &[RecordBatch],
    ) {
        let Some(results) = &self.ctx.results else { return };
        let rows = rows.map(|(b, r)| result_json(&output[b], r)).collect();
        let _ = results.send(WindowResult {
            rule: self.rule.id.clone(),
            window_start: start,
            window_end: end,
            rows,
        });
    }

    /// Steps the lifecycle with one result row as a breach; returns the row's key id.
    async fn breach_row(&mut self, out: &RecordBatch, row: usize, found: Found) -> String {
        let key = key_of(out, row, &self.rule.layout.key);
        let id = key.id.clone();
        let evidence = Evidence {
            key,
            level: self.level(out, row),
            values: values_of(out, row, &self.rule.layout.values),
            window: found.window,
            event_ms: found.event_ms,
            detected_ms: found.detected_ms,
            arrived_ns: found.arrived_ns,
        };
        self.health.breaches.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.lifecycle.breach(evidence) {
            self.emit(t).await;
        }
        id
    }

    pub(super) fn level(&mut self, out: &RecordBatch, row: usize) -> crate::alert::level::Level {
        match level_of(out, row, self.rule.layout.level, self.rule.level) {
            Ok(level) => level,
            Err(message) => {
                self.fail(&DataFusionError::Execution(format!("bad level value: {message}")));
                self.rule.level
            }
        }
    }

    pub(super) fn detected(&self, event_ms: EpochMs) -> EpochMs {
        match self.ctx.clock {
            DetectionClock::EventTime => event_ms,
            DetectionClock::Wall => wall_now_ms(),
        }
    }

    pub(super) async fn emit(&mut self, transition: Transition) {
        let emit_ns = self.ctx.metrics.now_ns();
        self.detection_latency
            .record(emit_ns.saturating_sub(transition.arrived_ns));
        let warning = Warning::from_transition(&self.rule.info, transition, emit_ns);
        // The sink ends only after every rule; a closed queue means shutdown is under way.
        let _ = self.ctx.warnings.send(warning).await;
    }
}
