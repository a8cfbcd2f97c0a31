//! Evaluating one rule over its table's batches, as one task per rule (rules run in
//! parallel). Window rules route each batch's rows to their open windows, whose plan
//! executions run concurrently and are fed as rows arrive; when the watermark passes a
//! window's end its stream is ended and its result rows are ready within a millisecond.
//! Row rules evaluate each batch and step the lifecycle row by row in arrival order.
//! A failing evaluation is counted and reported; the rule and the others go on.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{TimestampMillisecondType, UInt32Type};
use datafusion::error::DataFusionError;
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use futures::channel::mpsc as feed_channel;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::compile::{CompiledRule, RuleKind};
use super::devices::{DeviceWatch, Snapshot};
use super::output::{key_of, level_of, result_json, row_json, values_of};
use super::session::{ClosedSession, Sessions};
use crate::alert::lifecycle::{CleanStep, Evidence, FiringAlert, Lifecycle, Transition};
use crate::alert::warning::Warning;
use crate::batch::{TableBatch, TableEvent};
use crate::deadletter::{DeadLetter, Reason};
use crate::metrics::{Metrics, Stage, new_histogram};
use crate::time::{EpochMs, wall_now_ms};
use crate::window::WindowClock;

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
}

type WindowTask = JoinHandle<Result<Vec<RecordBatch>, DataFusionError>>;

/// One open window: the sender feeding its plan execution and the task driving it.
struct OpenWindow {
    tx: feed_channel::UnboundedSender<RecordBatch>,
    task: WindowTask,
}

struct Windows {
    clock: WindowClock,
    /// Open windows by end (each end has one window).
    open: BTreeMap<EpochMs, OpenWindow>,
    /// Every window ending at or before this has been closed and judged.
    judged_through: Option<EpochMs>,
    /// Max `ts` of the rows themselves (idle advances excluded), the base of idle time.
    row_max_ts: Option<EpochMs>,
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
    eval_latency: Histogram<u64>,
    detection_latency: Histogram<u64>,
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
        RuleWorker {
            sessions,
            devices,
            lifecycle: Lifecycle::new(&rule.id, rule.policy),
            rule,
            windows,
            ctx,
            errors: 0,
            eval_latency: new_histogram(),
            detection_latency: new_histogram(),
        }
    }

    /// Consumes the table's events until the end of input.
    pub async fn run(mut self, mut rx: mpsc::Receiver<TableEvent>) -> RuleReport {
        let mut ends = 0;
        while let Some(event) = rx.recv().await {
            match event {
                TableEvent::Batch(batch) => {
                    let started = Instant::now();
                    let result = match self.rule.kind {
                        RuleKind::Row => self.on_row_batch(&batch).await,
                        RuleKind::Window(_) => self.on_window_batch(&batch).await,
                        RuleKind::Session { .. } => self.on_session_batch(&batch).await,
                        RuleKind::Devices => self.on_devices_batch(&batch).await,
                    };
                    if let Err(e) = result {
                        self.fail(&e);
                    }
                    let _ = self.eval_latency.record(started.elapsed().as_nanos().max(1) as u64);
                    self.ctx.metrics.merge(Stage::RuleEval, &mut self.eval_latency);
                    self.ctx.metrics.merge(Stage::Detection, &mut self.detection_latency);
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
                    break;
                }
            }
        }
        self.ctx.metrics.merge(Stage::Detection, &mut self.detection_latency);
        RuleReport {
            rule: self.rule.id.clone(),
            firing: self.lifecycle.firing(),
            errors: self.errors,
        }
    }

    fn fail(&mut self, error: &DataFusionError) {
        self.errors += 1;
        self.ctx.metrics.rule_errors.fetch_add(1, Ordering::Relaxed);
        // The first failures are logged in full; later ones are counted (see the summary).
        if self.errors <= 3 {
            tracing::warn!(rule = %self.rule.id, error = %error.strip_backtrace(), "rule evaluation failed; the rule goes on");
        }
    }

    // ---- row rules -------------------------------------------------------------------

    async fn on_row_batch(&mut self, input: &TableBatch) -> Result<(), DataFusionError> {
        let batch = &input.batch;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(UInt32Array::from_iter_values(0..rows as u32)));
        let fed = RecordBatch::try_new(Arc::clone(&self.rule.feed_schema), columns)?;
        let output = collect(self.rule.execute(self.rule.stream_of(vec![fed]))?).await?;

        let mut breach_at: Vec<Option<(usize, usize)>> = vec![None; rows];
        let row_index = self.rule.layout.row_index.unwrap_or_default();
        for (b, out) in output.iter().enumerate() {
            let indices = out.column(row_index).as_primitive::<UInt32Type>();
            for r in 0..out.num_rows() {
                if let Some(slot) = breach_at.get_mut(indices.value(r) as usize) {
                    *slot = Some((b, r));
                }
            }
        }
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        for (i, breach) in breach_at.into_iter().enumerate() {
            let event_ms = ts.value(i);
            let detected_ms = self.detected(event_ms);
            let arrived_ns = input.arrivals_ns[i];
            let transition = match breach {
                Some((b, r)) => {
                    let out = &output[b];
                    let level = self.level(out, r);
                    self.lifecycle.breach(Evidence {
                        key: key_of(batch, i, &self.rule.layout.key),
                        level,
                        values: values_of(out, r, &self.rule.layout.values),
                        window: None,
                        event_ms,
                        detected_ms,
                        arrived_ns,
                    })
                }
                None if !self.lifecycle.is_empty() => {
                    let key = key_of(batch, i, &self.rule.layout.key);
                    self.lifecycle.clean(
                        &key.id,
                        CleanStep {
                            window: None,
                            detected_ms,
                            arrived_ns,
                        },
                    )
                }
                None => None,
            };
            if let Some(t) = transition {
                self.emit(t).await;
            }
        }
        Ok(())
    }

    // ---- window rules ----------------------------------------------------------------

    async fn on_window_batch(&mut self, input: &TableBatch) -> Result<(), DataFusionError> {
        let Some(windows) = self.windows.as_mut() else {
            return Ok(());
        };
        let batch = &input.batch;
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let routing = windows.clock.route(ts.values());
        let spec = windows.clock.spec();
        let batch_max = ts.values().iter().copied().max();
        windows.row_max_ts = windows.row_max_ts.max(batch_max);

        for (end, rows) in routing.windows {
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(rows))?
            };
            let (start, end) = spec.window_ending_at(end);
            let fed = with_window(&self.rule, part, start, end)?;
            let window = match windows.open.entry(end) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(open_window(&self.rule)?),
            };
            // A send fails only if the window's execution already failed; its task reports why.
            let _ = window.tx.unbounded_send(fed);
        }
        self.dead_letter_late(input, &routing.late);
        for advance in routing.advances {
            let arrived_ns = advance
                .row
                .map(|r| input.arrivals_ns[r])
                .unwrap_or_else(|| self.ctx.metrics.now_ns());
            self.judge_through(advance.boundary, advance.event_ms, arrived_ns).await;
        }
        Ok(())
    }

    /// Counts and dead-letters rows that came after every window holding them had closed.
    fn dead_letter_late(&self, input: &TableBatch, late: &[u32]) {
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
                topic: input.topics[row].to_string(),
                at: input.at_ms[row],
                rule: Some(self.rule.id.clone()),
                payload: row_json(&input.batch, row),
            });
        }
    }

    // ---- session rules ---------------------------------------------------------------

    async fn on_session_batch(&mut self, input: &TableBatch) -> Result<(), DataFusionError> {
        let Some(sessions) = self.sessions.as_mut() else {
            return Ok(());
        };
        let routing = sessions.route(&input.batch)?;
        self.dead_letter_late(input, &routing.late);
        let now_ns = self.ctx.metrics.now_ns();
        let arrivals: Vec<u64> = routing
            .closed
            .iter()
            .map(|c| c.row.map(|r| input.arrivals_ns[r]).unwrap_or(now_ns))
            .collect();
        self.judge_sessions(routing.closed, &arrivals).await
    }

    /// Evaluates closed sessions — one plan execution for as many as have distinct keys —
    /// and steps each session's alert: a breach per result row, a clean step otherwise.
    async fn judge_sessions(&mut self, closed: Vec<ClosedSession>, arrivals: &[u64]) -> Result<(), DataFusionError> {
        let mut remaining: Vec<(ClosedSession, u64)> = closed.into_iter().zip(arrivals.iter().copied()).collect();
        while !remaining.is_empty() {
            let mut keys = HashSet::new();
            let split = remaining
                .iter()
                .position(|(c, _)| !keys.insert(c.key_id.clone()))
                .unwrap_or(remaining.len());
            let rest = remaining.split_off(split);
            let group = std::mem::replace(&mut remaining, rest);
            let started = Instant::now();
            let mut fed = Vec::new();
            for (session, _) in &group {
                for part in &session.parts {
                    fed.push(with_window(&self.rule, part.clone(), session.start, session.end)?);
                }
            }
            let output = collect(self.rule.execute(self.rule.stream_of(fed))?).await?;
            self.ctx
                .metrics
                .windows_closed
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            self.ctx
                .metrics
                .record(Stage::WindowClose, started.elapsed().as_nanos() as u64);
            let mut rows_by_key: std::collections::HashMap<String, Vec<(usize, usize)>> =
                std::collections::HashMap::new();
            for (b, out) in output.iter().enumerate() {
                for r in 0..out.num_rows() {
                    rows_by_key
                        .entry(key_of(out, r, &self.rule.layout.key).id)
                        .or_default()
                        .push((b, r));
                }
            }
            for (session, arrived_ns) in group {
                let window = Some((session.start, session.end));
                let detected_ms = self.detected(session.event_ms);
                let rows = rows_by_key.remove(&session.key_id);
                self.capture(session.start, session.end, rows.iter().flatten().copied(), &output);
                match rows {
                    Some(rows) => {
                        for (b, r) in rows {
                            let out = &output[b];
                            let evidence = Evidence {
                                key: key_of(out, r, &self.rule.layout.key),
                                level: self.level(out, r),
                                values: values_of(out, r, &self.rule.layout.values),
                                window,
                                event_ms: session.start,
                                detected_ms,
                                arrived_ns,
                            };
                            if let Some(t) = self.lifecycle.breach(evidence) {
                                self.emit(t).await;
                            }
                        }
                    }
                    None => {
                        if let Some(t) = self.lifecycle.clean(
                            &session.key_id,
                            CleanStep {
                                window,
                                detected_ms,
                                arrived_ns,
                            },
                        ) {
                            self.emit(t).await;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    // ---- devices rules ----------------------------------------------------------------

    async fn on_devices_batch(&mut self, input: &TableBatch) -> Result<(), DataFusionError> {
        let Some(watch) = self.devices.as_mut() else {
            return Ok(());
        };
        let due = watch.observe(input)?;
        let now_ns = self.ctx.metrics.now_ns();
        for snapshot in due {
            let arrived_ns = snapshot.row.map(|r| input.arrivals_ns[r]).unwrap_or(now_ns);
            self.judge_snapshot(snapshot, arrived_ns).await?;
        }
        Ok(())
    }

    /// Judges a `devices` snapshot: a breach per result row, a clean step for every other
    /// live alert.
    async fn judge_snapshot(&mut self, snapshot: Snapshot, arrived_ns: u64) -> Result<(), DataFusionError> {
        let output = collect(self.rule.execute(self.rule.stream_of(vec![snapshot.batch]))?).await?;
        let detected_ms = self.detected(snapshot.at_ms);
        let mut breached = HashSet::new();
        for out in &output {
            for r in 0..out.num_rows() {
                let key = key_of(out, r, &self.rule.layout.key);
                breached.insert(key.id.clone());
                let evidence = Evidence {
                    key,
                    level: self.level(out, r),
                    values: values_of(out, r, &self.rule.layout.values),
                    window: None,
                    event_ms: snapshot.at_ms,
                    detected_ms,
                    arrived_ns,
                };
                if let Some(t) = self.lifecycle.breach(evidence) {
                    self.emit(t).await;
                }
            }
        }
        // The snapshot covered one table: only that table's alerts can be clean.
        let table = serde_json::Value::String(snapshot.table_name.clone());
        let judged = |key: &crate::alert::lifecycle::AlertKey| {
            key.fields
                .iter()
                .all(|(name, value)| name != crate::schema::TABLE_NAME || *value == table)
        };
        for t in self.lifecycle.clean_where(
            &breached,
            CleanStep {
                window: None,
                detected_ms,
                arrived_ns,
            },
            judged,
        ) {
            self.emit(t).await;
        }
        Ok(())
    }

    async fn on_idle(&mut self, table: usize, now_ms: EpochMs, last_arrival_ms: EpochMs, arrived_ns: u64) {
        if let Some(watch) = self.devices.as_mut() {
            let judged = match watch.idle(table, now_ms, last_arrival_ms) {
                Ok(Some(snapshot)) => self.judge_snapshot(snapshot, arrived_ns).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = judged {
                self.fail(&e);
            }
            return;
        }
        if let Some(sessions) = self.sessions.as_mut() {
            let Some(row_max_ts) = sessions.row_max_ts() else {
                return;
            };
            let closed = sessions.advance_to(row_max_ts + (now_ms - last_arrival_ms).max(0));
            let arrivals = vec![arrived_ns; closed.len()];
            if let Err(e) = self.judge_sessions(closed, &arrivals).await {
                self.fail(&e);
            }
            return;
        }
        let Some(windows) = self.windows.as_mut() else { return };
        let Some(row_max_ts) = windows.row_max_ts else { return };
        // Event time is taken to advance with the clock since the table's last row.
        let event_ms = row_max_ts + (now_ms - last_arrival_ms).max(0);
        if let Some(advance) = windows.clock.advance_to(event_ms) {
            self.judge_through(advance.boundary, advance.event_ms, arrived_ns).await;
        }
    }

    async fn on_end(&mut self, arrived_ns: u64) {
        if let Some(sessions) = self.sessions.as_mut() {
            let closed = sessions.close_all();
            let arrivals = vec![arrived_ns; closed.len()];
            if let Err(e) = self.judge_sessions(closed, &arrivals).await {
                self.fail(&e);
            }
            return;
        }
        let Some(windows) = self.windows.as_mut() else { return };
        let spec = windows.clock.spec();
        let max_ts = windows.clock.max_ts().unwrap_or_default();
        let open = std::mem::take(&mut windows.open);
        for (end, window) in open {
            let (start, end) = spec.window_ending_at(end);
            self.close(window, start, end, max_ts, arrived_ns).await;
        }
    }

    /// Closes and judges every window ending in (judged_through, boundary], in order.
    /// Windows without rows are clean steps for every live alert.
    async fn judge_through(&mut self, boundary: EpochMs, event_ms: EpochMs, arrived_ns: u64) {
        let Some(windows) = self.windows.as_mut() else { return };
        let spec = windows.clock.spec();
        let step = spec.step_ms();
        let from = windows
            .judged_through
            .or_else(|| windows.open.keys().next().map(|end| end - step))
            .unwrap_or(boundary)
            .min(boundary);
        windows.judged_through = Some(boundary);
        // Beyond `resolve_after` empty windows nothing more can change; skip long silences.
        let mut empty_budget = self.rule.policy.resolve_after as usize;
        let ends: Vec<EpochMs> = if (boundary - from) / step <= 100_000 {
            windows.clock.ends_between(from, boundary).collect()
        } else {
            windows.open.range(..=boundary).map(|(end, _)| *end).collect()
        };
        for end in ends {
            let (start, end) = spec.window_ending_at(end);
            let open = self.windows.as_mut().and_then(|w| w.open.remove(&end));
            match open {
                Some(window) => {
                    empty_budget = self.rule.policy.resolve_after as usize;
                    self.close(window, start, end, event_ms, arrived_ns).await;
                }
                None if !self.lifecycle.is_empty() && empty_budget > 0 => {
                    empty_budget -= 1;
                    let step = CleanStep {
                        window: Some((start, end)),
                        detected_ms: self.detected(event_ms),
                        arrived_ns,
                    };
                    for t in self.lifecycle.clean_all_except(&HashSet::new(), step) {
                        self.emit(t).await;
                    }
                }
                None => {}
            }
        }
    }

    /// Ends one window's input, waits for its result rows and steps the lifecycle.
    async fn close(&mut self, window: OpenWindow, start: EpochMs, end: EpochMs, event_ms: EpochMs, arrived_ns: u64) {
        let started = Instant::now();
        drop(window.tx);
        let output = match window.task.await {
            Ok(Ok(batches)) => batches,
            Ok(Err(e)) => {
                self.fail(&e);
                return;
            }
            Err(join) => {
                self.fail(&DataFusionError::Execution(format!(
                    "window evaluation task failed: {join}"
                )));
                return;
            }
        };
        self.ctx.metrics.windows_closed.fetch_add(1, Ordering::Relaxed);
        self.ctx
            .metrics
            .record(Stage::WindowClose, started.elapsed().as_nanos() as u64);
        let all_rows = output
            .iter()
            .enumerate()
            .flat_map(|(b, out)| (0..out.num_rows()).map(move |r| (b, r)));
        self.capture(start, end, all_rows, &output);
        let detected_ms = self.detected(event_ms);
        let mut breached = HashSet::new();
        for out in &output {
            for r in 0..out.num_rows() {
                let key = key_of(out, r, &self.rule.layout.key);
                breached.insert(key.id.clone());
                let evidence = Evidence {
                    key,
                    level: self.level(out, r),
                    values: values_of(out, r, &self.rule.layout.values),
                    window: Some((start, end)),
                    event_ms: start,
                    detected_ms,
                    arrived_ns,
                };
                if let Some(t) = self.lifecycle.breach(evidence) {
                    self.emit(t).await;
                }
            }
        }
        let step = CleanStep {
            window: Some((start, end)),
            detected_ms,
            arrived_ns,
        };
        for t in self.lifecycle.clean_all_except(&breached, step) {
            self.emit(t).await;
        }
    }

    // ---- shared ----------------------------------------------------------------------

    /// Sends a window's result rows to the capture, when one is attached.
    fn capture(
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

    fn level(&mut self, out: &RecordBatch, row: usize) -> crate::alert::level::Level {
        match level_of(out, row, self.rule.layout.level, self.rule.level) {
            Ok(level) => level,
            Err(message) => {
                self.fail(&DataFusionError::Execution(format!("bad level value: {message}")));
                self.rule.level
            }
        }
    }

    fn detected(&self, event_ms: EpochMs) -> EpochMs {
        match self.ctx.clock {
            DetectionClock::EventTime => event_ms,
            DetectionClock::Wall => wall_now_ms(),
        }
    }

    async fn emit(&mut self, transition: Transition) {
        let emit_ns = self.ctx.metrics.now_ns();
        let _ = self
            .detection_latency
            .record(emit_ns.saturating_sub(transition.arrived_ns).max(1));
        let warning = Warning::from_transition(&self.rule.info, transition, emit_ns);
        // The sink ends only after every rule; a closed queue means shutdown is under way.
        let _ = self.ctx.warnings.send(warning).await;
    }
}

/// Starts one window's plan execution, fed by an unbounded channel (bounded in practice
/// by the table queue upstream) and driven by its own task.
fn open_window(rule: &Arc<CompiledRule>) -> Result<OpenWindow, DataFusionError> {
    let (tx, rx) = feed_channel::unbounded::<RecordBatch>();
    let input = Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&rule.feed_schema), rx.map(Ok)));
    let stream = rule.execute(input)?;
    let task = tokio::spawn(collect(stream));
    Ok(OpenWindow { tx, task })
}

/// Appends the constant `window_start`/`window_end` columns a window rule's plan expects.
fn with_window(
    rule: &CompiledRule,
    part: RecordBatch,
    start: EpochMs,
    end: EpochMs,
) -> Result<RecordBatch, DataFusionError> {
    let rows = part.num_rows();
    let mut columns: Vec<ArrayRef> = part.columns().to_vec();
    columns.push(Arc::new(
        TimestampMillisecondArray::from_value(start, rows).with_timezone(crate::schema::UTC),
    ));
    columns.push(Arc::new(
        TimestampMillisecondArray::from_value(end, rows).with_timezone(crate::schema::UTC),
    ));
    Ok(RecordBatch::try_new(Arc::clone(&rule.feed_schema), columns)?)
}
