//! Evaluating one rule over its table's batches, as one task per rule (rules run in
//! parallel). A `RuleWorker` is two halves: the state its kind of rule keeps between
//! batches (`KindState`, one variant per kind) and what every kind shares (`Judge`: the
//! rule, its alert lifecycle, the pipeline's channels). Each kind's file owns its state and
//! its handlers for a batch, an idle tick and the end of input:
//! - `rows`: row rules evaluate each batch and step the lifecycle row by row in arrival
//!   order;
//! - `windows`: window rules route each batch's rows to their open windows, whose plan
//!   executions are fed as rows arrive; when the watermark passes a window's end its
//!   stream is ended and its result rows are ready within a millisecond;
//! - `sessions`: session rules gather rows per key into sessions, judged when they close;
//! - `snapshots`: `devices` rules judge a snapshot of each table's devices each minute.
//!
//! Rows failing the rule's WHERE clause are dropped before any plan sees them. A failing
//! evaluation is counted and reported; the rule and the others go on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use tokio::sync::mpsc;

use super::compile::{CompiledRule, RuleKind};
use crate::alert::lifecycle::{CleanStep, FiringAlert, Lifecycle};
use crate::alert::sink::Notice;
use crate::flow::{Cut, TableEvent};
use crate::metrics::{LocalLatency, MERGE_EVERY, Metrics, Stage};
use crate::state::snapshot::{JudgeFromSnapshot, KindSnapshot, RuleSnapshot};
use crate::time::{EpochMs, wall_now_ms};

mod judge;
mod rows;
mod sessions;
mod snapshots;
mod windows;

use judge::{Judge, JudgeFrom};
use rows::RowState;
use sessions::SessionState;
use snapshots::DevicesState;
use windows::WindowState;

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
pub(crate) struct WorkerContext {
    /// Where closed windows' result rows go, when captured.
    pub results: Option<mpsc::UnboundedSender<WindowResult>>,
    pub metrics: Arc<Metrics>,
    /// Warnings, and rule snapshots at checkpoints, to the sink thread.
    pub warnings: mpsc::Sender<Notice>,
    pub clock: DetectionClock,
    pub table_name: String,
    /// Names of every table (the `devices` table lists devices of all of them).
    pub table_names: Vec<String>,
    /// How many tables feed this rule: it stops after an End from each.
    pub inputs: usize,
    /// Whether the end of input closes and judges every open window and session (a
    /// replay's end). A run that keeps state only pauses: its windows stay open in the
    /// checkpoint for the next run.
    pub close_at_end: bool,
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

/// The names of a rule's alert key columns.
fn key_names(judge: &Judge) -> Vec<String> {
    judge.rule.layout.key.iter().map(|(n, _)| n.clone()).collect()
}

/// What a rule keeps between batches, by kind; each variant's state and handlers live in
/// that kind's file.
enum KindState {
    Row(RowState),
    Window(WindowState),
    Session(SessionState),
    Devices(DevicesState),
}

impl KindState {
    fn new(rule: &CompiledRule, ctx: &WorkerContext) -> Self {
        match rule.kind {
            RuleKind::Row => KindState::Row(RowState),
            RuleKind::Window(spec) => KindState::Window(WindowState::new(spec, rule.lateness_ms)),
            RuleKind::Session { gap_ms } => KindState::Session(SessionState::new(
                gap_ms,
                rule.lateness_ms,
                rule.session_key.input.clone(),
            )),
            RuleKind::Devices => KindState::Devices(DevicesState::new(ctx.table_names.clone())),
        }
    }

    /// How much the rule holds now (open windows, open sessions, watched devices), as the
    /// live view shows it.
    fn size(&self) -> usize {
        match self {
            KindState::Row(_) => 0,
            KindState::Window(windows) => windows.open_windows(),
            KindState::Session(sessions) => sessions.open_sessions(),
            KindState::Devices(devices) => devices.watched(),
        }
    }
}

/// The evaluation state of one rule.
pub(crate) struct RuleWorker {
    state: KindState,
    judge: Judge,
    /// Time spent evaluating each batch.
    eval_latency: LocalLatency,
    /// Max `ts` of the rows seen (stamps the resolutions of a retired rule).
    last_event_ms: Option<EpochMs>,
    last_merge: Instant,
    /// Checkpoint cuts under way (by number), until each came from every input table: a
    /// rule reading several tables may see the next cut from one table before this one
    /// from another.
    cuts: BTreeMap<u64, PendingCut>,
}

/// A checkpoint's cut as it comes in from a rule's input tables.
struct PendingCut {
    /// From how many tables it came so far.
    seen: usize,
    /// When each of those tables' last row arrived.
    arrivals: Vec<(usize, Option<EpochMs>)>,
}

impl RuleWorker {
    pub(crate) fn new(rule: Arc<CompiledRule>, ctx: WorkerContext) -> Self {
        let state = KindState::new(&rule, &ctx);
        let health = ctx.metrics.rules.register(
            &rule.id,
            &rule.version,
            rule.kind.name(),
            &rule.info.table,
            &rule.info.description,
        );
        RuleWorker {
            state,
            judge: Judge::new(rule, ctx, health),
            eval_latency: LocalLatency::new(),
            last_event_ms: None,
            last_merge: Instant::now(),
            cuts: BTreeMap::new(),
        }
    }

    /// The rule's whole state at a checkpoint's cut.
    fn snapshot(&mut self, last_arrivals: Vec<(usize, Option<EpochMs>)>) -> RuleSnapshot {
        let judge = &self.judge;
        RuleSnapshot {
            rule: judge.rule.id.clone(),
            version: judge.rule.version.clone(),
            table: judge.rule.info.table.clone(),
            description: judge.rule.info.description.clone(),
            key_columns: key_names(judge),
            errors: judge.errors,
            last_event_ms: self.last_event_ms,
            judge_from: match judge.judge_from {
                JudgeFrom::Start => JudgeFromSnapshot::Start,
                JudgeFrom::FirstRow => JudgeFromSnapshot::FirstRow,
                JudgeFrom::Ts(ts) => JudgeFromSnapshot::Ts(ts),
            },
            alerts: judge.lifecycle.snapshot(),
            last_arrivals,
            kind: match &mut self.state {
                KindState::Row(_) => KindSnapshot::Row,
                KindState::Window(windows) => KindSnapshot::Window(windows.snapshot()),
                KindState::Session(sessions) => KindSnapshot::Session(sessions.snapshot()),
                KindState::Devices(devices) => KindSnapshot::Devices(devices.snapshot()),
            },
        }
    }

    /// Takes back this rule's state from a checkpoint. A rule whose text changed while
    /// cityops was down is treated as a hot reload: it starts with fresh windows and
    /// sessions (judging only windows that start after its first row), takes over the
    /// alerts when it keys them by the same columns and otherwise resolves them; a
    /// `devices` rule keeps its devices either way.
    pub(crate) async fn restore(&mut self, saved: RuleSnapshot) {
        let unchanged = saved.version == self.judge.rule.version;
        self.judge.errors = saved.errors;
        self.last_event_ms = saved.last_event_ms;
        if saved.key_columns == key_names(&self.judge) {
            self.judge.lifecycle.restore(saved.alerts);
        } else {
            let mut old = Lifecycle::new(&self.judge.rule.id, self.judge.rule.policy);
            old.restore(saved.alerts);
            let event_ms = saved.last_event_ms.unwrap_or_else(wall_now_ms);
            let step = CleanStep {
                window: None,
                detected_ms: self.judge.detected(event_ms),
                arrived_ns: self.judge.ctx.metrics.now_ns(),
            };
            for t in old.retire(step) {
                self.judge.emit(t).await;
            }
        }
        if !unchanged {
            tracing::info!(rule = %saved.rule, "the rule changed while cityops was down: it starts with fresh windows");
            self.judge.judge_from = JudgeFrom::FirstRow;
            if let (KindState::Devices(devices), KindSnapshot::Devices(saved)) = (&mut self.state, saved.kind) {
                devices.restore(saved);
            }
            return;
        }
        self.judge.judge_from = match saved.judge_from {
            JudgeFromSnapshot::Start => JudgeFrom::Start,
            JudgeFromSnapshot::FirstRow => JudgeFrom::FirstRow,
            JudgeFromSnapshot::Ts(ts) => JudgeFrom::Ts(ts),
        };
        match (&mut self.state, saved.kind) {
            (KindState::Window(windows), KindSnapshot::Window(saved)) => windows.restore(saved),
            (KindState::Session(sessions), KindSnapshot::Session(saved)) => sessions.restore(saved),
            (KindState::Devices(devices), KindSnapshot::Devices(saved)) => devices.restore(saved),
            _ => {}
        }
        self.note_state();
    }

    /// A checkpoint's cut came from one input table; once it came from all of them, the
    /// snapshot goes to the sink thread behind every warning emitted before the cut.
    async fn on_cut(&mut self, cut: Cut, table: usize, last_arrival_ms: Option<EpochMs>, rules: Arc<[String]>) {
        let pending = self.cuts.entry(cut.checkpoint).or_insert_with(|| PendingCut {
            seen: 0,
            arrivals: Vec::new(),
        });
        pending.seen += 1;
        pending.arrivals.push((table, last_arrival_ms));
        if pending.seen < self.judge.ctx.inputs {
            return;
        }
        let arrivals = self
            .cuts
            .remove(&cut.checkpoint)
            .map(|p| p.arrivals)
            .unwrap_or_default();
        let snapshot = Box::new(self.snapshot(arrivals));
        let _ = self
            .judge
            .ctx
            .warnings
            .send(Notice::Snapshot { cut, rules, snapshot })
            .await;
    }

    /// Takes over from this rule's previous version, which has drained its input: its
    /// alerts (when both key alerts by the same columns; otherwise the old alerts are
    /// resolved), its error count and, for `devices` rules, the devices' last-seen times.
    /// Window and session state is not carried: the plan changed, so this version judges
    /// only windows that start after it took over.
    pub(crate) async fn take_over(&mut self, mut previous: RuleWorker) {
        if key_names(&self.judge) == key_names(&previous.judge) {
            let old = &mut previous.judge;
            let fresh = Lifecycle::new(&old.rule.id, old.rule.policy);
            self.judge.lifecycle.adopt(std::mem::replace(&mut old.lifecycle, fresh));
        } else {
            previous.retire().await;
        }
        self.judge.errors += previous.judge.errors;
        self.judge.last_error = previous.judge.last_error.take();
        self.last_event_ms = previous.last_event_ms;
        if matches!(self.state, KindState::Devices(_)) && matches!(previous.state, KindState::Devices(_)) {
            self.state = previous.state;
        }
        self.judge.judge_from = JudgeFrom::FirstRow;
    }

    /// Resolves every firing alert: the rule was removed (or replaced by a version that
    /// keys its alerts differently).
    pub(crate) async fn retire(&mut self) {
        let event_ms = self.last_event_ms.unwrap_or_else(wall_now_ms);
        let judge = &mut self.judge;
        let step = CleanStep {
            window: None,
            detected_ms: judge.detected(event_ms),
            arrived_ns: judge.ctx.metrics.now_ns(),
        };
        for t in judge.lifecycle.retire(step) {
            judge.emit(t).await;
        }
        self.merge_histograms(true);
    }

    /// Merges the local latency histograms into the shared ones: when `now`, or when the
    /// last merge is `MERGE_EVERY` old.
    fn merge_histograms(&mut self, now: bool) {
        if now || self.last_merge.elapsed() >= MERGE_EVERY {
            let metrics = &self.judge.ctx.metrics;
            metrics.merge(Stage::RuleEval, &mut self.eval_latency);
            metrics.merge(Stage::Detection, &mut self.judge.detection_latency);
            self.last_merge = Instant::now();
        }
    }

    /// What the rule reports at the end of a run.
    pub(crate) fn report(&self) -> RuleReport {
        RuleReport {
            rule: self.judge.rule.id.clone(),
            firing: self.judge.lifecycle.firing(),
            errors: self.judge.errors,
            last_error: self.judge.last_error.clone(),
        }
    }

    /// Notes the event time of a batch's rows.
    fn observe_times(&mut self, batch: &RecordBatch) {
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let (Some(min), Some(max)) = (datafusion::arrow::compute::min(ts), datafusion::arrow::compute::max(ts)) else {
            return;
        };
        self.last_event_ms = self.last_event_ms.max(Some(max));
        if self.judge.judge_from == JudgeFrom::FirstRow {
            self.judge.judge_from = JudgeFrom::Ts(min);
        }
    }

    /// Consumes the table's events until the end of input (or until its queue is dropped,
    /// when a new version takes over); hands the worker back for `take_over` or `report`.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<TableEvent>) -> RuleWorker {
        let mut ends = 0;
        while let Some(event) = rx.recv().await {
            match event {
                TableEvent::Batch(batch) if batch.rebuild => {
                    if let KindState::Window(windows) = &mut self.state
                        && let Err(e) = windows.refill(&mut self.judge, &batch)
                    {
                        self.judge.fail(&e);
                    }
                }
                TableEvent::Barrier {
                    cut,
                    table,
                    last_arrival_ms,
                    rules,
                } => self.on_cut(cut, table, last_arrival_ms, rules).await,
                TableEvent::Batch(batch) => {
                    let started = Instant::now();
                    self.observe_times(&batch.batch);
                    let judge = &mut self.judge;
                    let result = match &mut self.state {
                        KindState::Row(rows) => rows.on_batch(judge, &batch).await,
                        KindState::Window(windows) => windows.on_batch(judge, &batch).await,
                        KindState::Session(sessions) => sessions.on_batch(judge, &batch).await,
                        KindState::Devices(devices) => devices.on_batch(judge, &batch).await,
                    };
                    if let Err(e) = result {
                        self.judge.fail(&e);
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
                    let judge = &mut self.judge;
                    match &mut self.state {
                        KindState::Row(_) => {}
                        KindState::Window(windows) => {
                            windows.on_idle(judge, now_ms, last_arrival_ms, arrived_ns).await;
                        }
                        KindState::Session(sessions) => {
                            sessions.on_idle(judge, now_ms, last_arrival_ms, arrived_ns).await;
                        }
                        KindState::Devices(devices) => {
                            devices.on_idle(judge, table, now_ms, last_arrival_ms, arrived_ns).await;
                        }
                    }
                }
                TableEvent::End { arrived_ns } => {
                    ends += 1;
                    if ends < self.judge.ctx.inputs {
                        continue;
                    }
                    let judge = &mut self.judge;
                    match &mut self.state {
                        _ if !judge.ctx.close_at_end => {}
                        KindState::Row(_) | KindState::Devices(_) => {}
                        KindState::Window(windows) => windows.on_end(judge, arrived_ns).await,
                        KindState::Session(sessions) => sessions.on_end(judge, arrived_ns).await,
                    }
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
        let health = &self.judge.health;
        health.rows_in.fetch_add(rows as u64, Ordering::Relaxed);
        health.batches.fetch_add(1, Ordering::Relaxed);
        health.eval_ns.fetch_add(took_ns, Ordering::Relaxed);
        self.note_state();
    }

    /// Publishes the state the rule holds now and its live alerts.
    fn note_state(&self) {
        let health = &self.judge.health;
        health.state_size.store(self.state.size() as u64, Ordering::Relaxed);
        health
            .alerts
            .store(self.judge.lifecycle.len() as u64, Ordering::Relaxed);
    }
}
