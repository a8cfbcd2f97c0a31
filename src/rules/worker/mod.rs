//! Evaluating rules over their table's batches, as one task per unit (units run in
//! parallel). A unit is one rule, or a window family: rules that share one aggregation
//! (`compile::family`). A `RuleWorker` is two halves: the state its kind of rule keeps
//! between batches (`KindState`, one variant per kind) and, per rule of the unit, what
//! every kind shares (`Judge`: the rule, its alert lifecycle, the pipeline's channels).
//! Taking over from a previous unit and from a checkpoint is in `handover`. Each kind's
//! file owns its state and its handlers for a batch, an idle tick and the end of input:
//! - `rows`: row rules evaluate each batch and step the lifecycle row by row in arrival
//!   order (the row rules of a table share one task);
//! - `windows`: window rules route each batch's rows to their open windows, whose plan
//!   executions are fed as rows arrive; when the watermark passes a window's end its
//!   stream is ended and each rule of the family judges its own result rows from it;
//! - `sessions`: session rules gather rows per key into sessions, judged when they close;
//! - `snapshots`: `devices` rules judge a snapshot of each table's devices each minute.
//!
//! Rows failing the rule's WHERE clause are dropped before any plan sees them. A failing
//! evaluation is counted and reported; the rule and the others go on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use super::compile::{CompiledRule, RuleKind};
use crate::alert::lifecycle::FiringAlert;
use crate::alert::sink::Notice;
use crate::flow::{Cut, TableBatch, TableEvent};
use crate::metrics::{LocalLatency, MERGE_EVERY, Metrics, Stage};
use crate::state::snapshot::{JudgeFromSnapshot, KindSnapshot, RuleSnapshot};
use crate::time::EpochMs;

mod handover;
mod judge;
mod rows;
mod sessions;
mod snapshots;
mod windows;

pub(crate) use handover::Handover;
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

/// The evaluation state of one unit: one rule, or a window family.
pub(crate) struct RuleWorker {
    state: KindState,
    /// The unit's rules: one, or a family's members, which share `state` and judge each
    /// closed window by themselves.
    judges: Vec<Judge>,
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
    /// A unit of `rules`: one rule, or the members of one window family.
    pub(crate) fn new(rules: Vec<Arc<CompiledRule>>, ctx: WorkerContext) -> Self {
        let state = match rules.first() {
            Some(rule) => KindState::new(rule, &ctx),
            None => KindState::Row(RowState),
        };
        let family_size = rules.len() as u64;
        let judges: Vec<Judge> = rules.into_iter().map(|rule| judge_of(rule, ctx.clone())).collect();
        for judge in &judges {
            judge.health.family_size.store(family_size, Ordering::Relaxed);
        }
        RuleWorker {
            state,
            judges,
            eval_latency: LocalLatency::new(),
            last_event_ms: None,
            last_merge: Instant::now(),
            cuts: BTreeMap::new(),
        }
    }

    /// Each rule's whole state at a checkpoint's cut (a family's members share the
    /// windows part).
    fn snapshots(&mut self, last_arrivals: Vec<(usize, Option<EpochMs>)>) -> Vec<RuleSnapshot> {
        let kind = match &mut self.state {
            KindState::Row(_) => KindSnapshot::Row,
            KindState::Window(windows) => KindSnapshot::Window(windows.snapshot()),
            KindState::Session(sessions) => KindSnapshot::Session(sessions.snapshot()),
            KindState::Devices(devices) => KindSnapshot::Devices(devices.snapshot()),
        };
        self.judges
            .iter()
            .map(|judge| RuleSnapshot {
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
                last_arrivals: last_arrivals.clone(),
                kind: kind.clone(),
            })
            .collect()
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
        if pending.seen < self.inputs() {
            return;
        }
        let arrivals = self
            .cuts
            .remove(&cut.checkpoint)
            .map(|p| p.arrivals)
            .unwrap_or_default();
        let Some(warnings) = self.judges.first().map(|judge| judge.ctx.warnings.clone()) else {
            return;
        };
        for snapshot in self.snapshots(arrivals) {
            let snapshot = Box::new(snapshot);
            let rules = Arc::clone(&rules);
            let _ = warnings.send(Notice::Snapshot { cut, rules, snapshot }).await;
        }
    }

    /// Merges the local latency histograms into the shared ones: when `now`, or when the
    /// last merge is `MERGE_EVERY` old.
    fn merge_histograms(&mut self, now: bool) {
        if now || self.last_merge.elapsed() >= MERGE_EVERY {
            let Some(metrics) = self.judges.first().map(|judge| Arc::clone(&judge.ctx.metrics)) else {
                return;
            };
            metrics.merge(Stage::RuleEval, &mut self.eval_latency);
            for judge in &mut self.judges {
                metrics.merge(Stage::Detection, &mut judge.detection_latency);
            }
            self.last_merge = Instant::now();
        }
    }

    /// What each rule of the unit reports at the end of a run.
    pub(crate) fn reports(&self) -> Vec<RuleReport> {
        self.judges
            .iter()
            .map(|judge| RuleReport {
                rule: judge.rule.id.clone(),
                firing: judge.lifecycle.firing(),
                errors: judge.errors,
                last_error: judge.last_error.clone(),
            })
            .collect()
    }

    /// How many tables feed the unit: it stops after an End from each.
    fn inputs(&self) -> usize {
        self.judges.first().map_or(1, |judge| judge.ctx.inputs)
    }

    /// Whether the end of input closes and judges every open window and session.
    fn close_at_end(&self) -> bool {
        self.judges.first().is_some_and(|judge| judge.ctx.close_at_end)
    }

    /// Notes the event time of a batch's rows.
    fn observe_times(&mut self, batch: &TableBatch) {
        let Some((min, max)) = batch.ts_range() else {
            return;
        };
        self.last_event_ms = self.last_event_ms.max(Some(max));
        for judge in &mut self.judges {
            if judge.judge_from == JudgeFrom::FirstRow {
                judge.judge_from = JudgeFrom::Ts(min);
            }
        }
    }

    /// Evaluates one batch with the unit's kind of state.
    async fn on_batch(&mut self, batch: &TableBatch) {
        // Families: a failure to evaluate their shared state is each member's.
        let shared = match &mut self.state {
            KindState::Window(windows) => Some(windows.on_batch(&mut self.judges, batch).await),
            KindState::Devices(devices) => Some(devices.on_batch(&mut self.judges, batch).await),
            KindState::Row(_) | KindState::Session(_) => None,
        };
        if let Some(result) = shared {
            if let Err(e) = result {
                self.judges.iter_mut().for_each(|judge| judge.fail(&e));
            }
            return;
        }
        match &mut self.state {
            // The row rules of a table share one task and keep nothing: each judges the
            // batch by itself.
            KindState::Row(rows) => {
                for judge in &mut self.judges {
                    if let Err(e) = rows.on_batch(judge, batch).await {
                        judge.fail(&e);
                    }
                }
            }
            KindState::Session(sessions) => {
                if let Some(judge) = self.judges.first_mut()
                    && let Err(e) = sessions.on_batch(judge, batch).await
                {
                    judge.fail(&e);
                }
            }
            KindState::Window(_) | KindState::Devices(_) => {}
        }
    }

    /// The table was idle until `now_ms`: event time may advance.
    async fn on_idle(&mut self, table: usize, now_ms: EpochMs, last_arrival_ms: EpochMs, arrived_ns: u64) {
        let judges = &mut self.judges;
        match &mut self.state {
            KindState::Row(_) => {}
            KindState::Window(windows) => windows.on_idle(judges, now_ms, last_arrival_ms, arrived_ns).await,
            KindState::Devices(devices) => {
                devices
                    .on_idle(judges, table, now_ms, last_arrival_ms, arrived_ns)
                    .await;
            }
            KindState::Session(sessions) => {
                if let Some(judge) = judges.first_mut() {
                    sessions.on_idle(judge, now_ms, last_arrival_ms, arrived_ns).await;
                }
            }
        }
    }

    /// The input ended: a replay closes and judges what is open.
    async fn on_end(&mut self, arrived_ns: u64) {
        if !self.close_at_end() {
            return;
        }
        match &mut self.state {
            KindState::Window(windows) => windows.on_end(&mut self.judges, arrived_ns).await,
            KindState::Session(sessions) => {
                if let Some(judge) = self.judges.first_mut() {
                    sessions.on_end(judge, arrived_ns).await;
                }
            }
            KindState::Row(_) | KindState::Devices(_) => {}
        }
    }

    /// Consumes the table's events until the end of input (or until its queue is dropped,
    /// when a new unit takes over); hands the worker back for `hand_over` or `reports`.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<TableEvent>) -> RuleWorker {
        let mut ends = 0;
        while let Some(event) = rx.recv().await {
            match event {
                TableEvent::Batch(batch) if batch.rebuild => {
                    if let KindState::Window(windows) = &mut self.state
                        && let Err(e) = windows.refill(&mut self.judges, &batch)
                    {
                        self.judges.iter_mut().for_each(|judge| judge.fail(&e));
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
                    self.observe_times(&batch);
                    self.on_batch(&batch).await;
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
                } => self.on_idle(table, now_ms, last_arrival_ms, arrived_ns).await,
                TableEvent::End { arrived_ns } => {
                    ends += 1;
                    if ends < self.inputs() {
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

    /// Publishes each rule's counters after a batch; a family's members share its
    /// evaluation time evenly.
    fn note_batch(&self, rows: usize, took_ns: u64) {
        let share_ns = took_ns / self.judges.len().max(1) as u64;
        for judge in &self.judges {
            let health = &judge.health;
            health.rows_in.fetch_add(rows as u64, Ordering::Relaxed);
            health.batches.fetch_add(1, Ordering::Relaxed);
            health.eval_ns.fetch_add(share_ns.max(1), Ordering::Relaxed);
        }
        self.note_state();
    }

    /// Publishes the state each rule holds now and its live alerts.
    fn note_state(&self) {
        let size = self.state.size() as u64;
        for judge in &self.judges {
            judge.health.state_size.store(size, Ordering::Relaxed);
            judge
                .health
                .alerts
                .store(judge.lifecycle.len() as u64, Ordering::Relaxed);
        }
    }
}

/// A rule's judge, registered on the rule board under its id.
fn judge_of(rule: Arc<CompiledRule>, mut ctx: WorkerContext) -> Judge {
    ctx.table_name = rule.info.table.clone();
    // A `devices` rule may watch several tables and ends after an End from each.
    ctx.inputs = rule.watched.len();
    let health = ctx.metrics.rules.register(
        &rule.id,
        &rule.version,
        rule.kind.name(),
        &rule.info.table,
        &rule.info.description,
    );
    Judge::new(rule, ctx, health)
}
