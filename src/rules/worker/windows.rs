//! Epoch-aligned window rules (tumble, hop, cumulate), run as families (`compile::family`):
//! each batch's rows that pass the family's WHERE clause are routed to their open windows,
//! whose plan executions (the family's shared aggregation) are fed as rows arrive and
//! driven on the family's own task; when the watermark passes a window's end its stream is
//! ended and each member rule judges the aggregation's result by its own HAVING, level and
//! projection. A rule whose plan does not split is a family of one, judging its plan's
//! rows as they are.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use futures::channel::mpsc as feed_channel;

use super::judge::{Found, Judge};
use crate::alert::lifecycle::CleanStep;
use crate::flow::TableBatch;
use crate::metrics::Stage;
use crate::rules::compile::{CompiledRule, EngineColumns};
use crate::state::snapshot::{OpenWindowSnapshot, WindowsSnapshot};
use crate::time::EpochMs;
use crate::window::{WindowClock, WindowSpec, idle_event_ms};

/// A window family's state: its windows' clock and the windows open now.
pub(super) struct WindowState {
    clock: WindowClock,
    /// Open windows by end (each end has one window).
    open: BTreeMap<EpochMs, OpenWindow>,
    /// Every window ending at or before this has been closed and judged.
    judged_through: Option<EpochMs>,
    /// Max `ts` of the rows themselves (idle advances excluded), the base of idle time.
    row_max_ts: Option<EpochMs>,
    /// Per open window (by end), the log position of the first message whose rows reached
    /// it: where recovery starts refilling it. Entries of closed windows are pruned at
    /// each snapshot.
    first_seqs: HashMap<EpochMs, u64>,
    /// After a recovery: the windows (by end) that recovery is refilling from the log.
    refilling: BTreeSet<EpochMs>,
}

impl WindowState {
    pub(super) fn new(spec: WindowSpec, lateness_ms: i64) -> Self {
        WindowState {
            clock: WindowClock::new(spec, lateness_ms),
            open: BTreeMap::new(),
            judged_through: None,
            row_max_ts: None,
            first_seqs: HashMap::new(),
            refilling: BTreeSet::new(),
        }
    }

    /// The clock and the open windows, as checkpoint data.
    pub(super) fn snapshot(&mut self) -> WindowsSnapshot {
        let open = &self.open;
        self.first_seqs.retain(|end, _| open.contains_key(end));
        WindowsSnapshot {
            max_ts: self.clock.max_ts(),
            closed_through: self.clock.closed_through(),
            judged_through: self.judged_through,
            row_max_ts: self.row_max_ts,
            open: self
                .open
                .keys()
                .map(|end| OpenWindowSnapshot {
                    end: *end,
                    first_seq: self.first_seqs.get(end).copied(),
                })
                .collect(),
        }
    }

    /// Takes back a checkpoint: the clock, and the open windows, empty until recovery
    /// refills them from the log (`refill`).
    pub(super) fn restore(&mut self, saved: WindowsSnapshot) {
        self.clock.restore(saved.max_ts, saved.closed_through);
        self.judged_through = saved.judged_through;
        self.row_max_ts = saved.row_max_ts;
        self.open = saved.open.iter().map(|w| (w.end, OpenWindow::Idle)).collect();
        self.first_seqs = saved
            .open
            .iter()
            .filter_map(|w| w.first_seq.map(|seq| (w.end, seq)))
            .collect();
        self.refilling = self.first_seqs.keys().copied().collect();
    }

    /// Feeds a batch that recovery reads again from the log into the windows it is
    /// refilling: a row goes to each of those windows holding its `ts` (when it passes the
    /// WHERE clause), exactly as the run before the crash fed it, since none of those
    /// windows had closed. Nothing else moves: the clock and the alerts are the checkpoint's.
    pub(super) fn refill(&mut self, judges: &mut [Judge], input: &TableBatch) -> Result<(), DataFusionError> {
        let Some(leader) = judges.first() else { return Ok(()) };
        if self.refilling.is_empty() {
            return Ok(());
        }
        let batch = &input.batch;
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let passing = leader.rule.passing_in(input)?;
        let spec = self.clock.spec();
        let mut rows_of: BTreeMap<EpochMs, Vec<u32>> = BTreeMap::new();
        for (i, &t) in ts.values().iter().enumerate() {
            if passing.as_ref().is_some_and(|mask| !mask.value(i)) {
                continue;
            }
            for end in spec.ends_of(t).filter(|end| self.refilling.contains(end)) {
                rows_of.entry(end).or_default().push(i as u32);
            }
        }
        for (end, rows) in rows_of {
            let (start, end) = spec.window_ending_at(end);
            if !covered(judges, start) {
                continue;
            }
            let Some(window) = self.open.get_mut(&end) else {
                continue;
            };
            window.feed_rows(&leader.rule, batch, rows, (start, end))?;
        }
        Ok(())
    }

    /// How many windows are open.
    pub(super) fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Routes a batch's passing rows to their windows and feeds them; judges the windows
    /// the batch's event time closed.
    pub(super) async fn on_batch(&mut self, judges: &mut [Judge], input: &TableBatch) -> Result<(), DataFusionError> {
        let Some(leader) = judges.first() else { return Ok(()) };
        let rule = Arc::clone(&leader.rule);
        // Recovery has refilled the windows: from here on the stream is live.
        self.refilling.clear();
        let batch = &input.batch;
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        // Rows failing the WHERE clause still move event time, but are fed to no window.
        let passing = rule.passing_in(input)?;
        let routing = match &passing {
            // No row passes (most often a gate: the batch lacks the rule's kind): the rows
            // still move event time, and no row is looked up in the mask.
            Some(mask) if mask.true_count() == 0 => self.clock.route_kept(ts.values(), |_| false),
            Some(mask) => self.clock.route_kept(ts.values(), |r| mask.value(r)),
            None => self.clock.route(ts.values()),
        };
        let spec = self.clock.spec();
        let batch_max = input.ts_range().map(|(_, max)| max);
        self.row_max_ts = self.row_max_ts.max(batch_max);

        for (end, rows) in routing.windows {
            let (start, _) = spec.window_ending_at(end);
            if !covered(judges, start) {
                // Began before any member took over: its predecessors saw the first rows.
                continue;
            }
            let window = self.open.entry(end).or_insert(OpenWindow::Idle);
            if rows.is_empty() {
                continue;
            }
            self.first_seqs.entry(end).or_insert(input.first_seq);
            window.feed_rows(&rule, batch, rows, spec.window_ending_at(end))?;
        }
        for judge in judges.iter() {
            judge.dead_letter_late(input, &routing.late);
        }
        for advance in routing.advances {
            let arrived_ns = advance
                .row
                .map(|r| input.arrivals_ns[r])
                .unwrap_or_else(|| pipeline_now_ns(judges));
            self.judge_through(judges, advance.boundary, advance.event_ms, arrived_ns)
                .await;
        }
        Ok(())
    }

    /// The table is idle: event time is taken to advance with the clock since its last row.
    pub(super) async fn on_idle(
        &mut self,
        judges: &mut [Judge],
        now_ms: EpochMs,
        last_arrival_ms: EpochMs,
        arrived_ns: u64,
    ) {
        let Some(row_max_ts) = self.row_max_ts else { return };
        if let Some(advance) = self
            .clock
            .advance_to(idle_event_ms(row_max_ts, now_ms, last_arrival_ms))
        {
            self.judge_through(judges, advance.boundary, advance.event_ms, arrived_ns)
                .await;
        }
    }

    /// The input ended: every open window is closed and judged.
    pub(super) async fn on_end(&mut self, judges: &mut [Judge], arrived_ns: u64) {
        let spec = self.clock.spec();
        let max_ts = self.clock.max_ts().unwrap_or_default();
        let open = std::mem::take(&mut self.open);
        for (end, window) in open {
            let (start, end) = spec.window_ending_at(end);
            window.close(judges, start, end, max_ts, arrived_ns).await;
        }
    }

    /// Closes and judges every window ending in (judged_through, boundary], in order.
    /// Windows without rows are clean steps for every live alert.
    async fn judge_through(&mut self, judges: &mut [Judge], boundary: EpochMs, event_ms: EpochMs, arrived_ns: u64) {
        let spec = self.clock.spec();
        let step = spec.step_ms();
        let from = self
            .judged_through
            .or_else(|| self.open.keys().next().map(|end| end - step))
            .unwrap_or(boundary)
            .min(boundary);
        self.judged_through = Some(boundary);
        // Beyond `resolve_after` empty windows nothing more can change; skip long silences.
        let resolve_after = |judge: &Judge| judge.rule.policy.resolve_after as usize;
        let mut empty_budgets: Vec<usize> = judges.iter().map(resolve_after).collect();
        let ends: Vec<EpochMs> = if (boundary - from) / step <= 100_000 {
            self.clock.ends_between(from, boundary).collect()
        } else {
            self.open.range(..=boundary).map(|(end, _)| *end).collect()
        };
        for end in ends {
            let (start, end) = spec.window_ending_at(end);
            if let Some(window) = self.open.remove(&end) {
                for (budget, judge) in empty_budgets.iter_mut().zip(judges.iter()) {
                    *budget = resolve_after(judge);
                }
                window.close(judges, start, end, event_ms, arrived_ns).await;
                continue;
            }
            for (budget, judge) in empty_budgets.iter_mut().zip(judges.iter_mut()) {
                if !judge.judge_from.covers(start, 0) || judge.lifecycle.is_empty() || *budget == 0 {
                    continue;
                }
                *budget -= 1;
                let step = CleanStep {
                    window: Some((start, end)),
                    detected_ms: judge.detected(event_ms),
                    arrived_ns,
                };
                for t in judge.lifecycle.clean_all_except(&HashSet::new(), step) {
                    judge.emit(t).await;
                }
            }
        }
    }
}

/// Whether some member of the family judges a window starting at `start` (the window is
/// fed only then).
fn covered(judges: &[Judge], start: EpochMs) -> bool {
    judges.iter().any(|judge| judge.judge_from.covers(start, 0))
}

/// The pipeline's clock now (ns since its start).
fn pipeline_now_ns(judges: &[Judge]) -> u64 {
    judges.first().map_or(0, |judge| judge.ctx.metrics.now_ns())
}

type WindowRun = Pin<Box<dyn Future<Output = Result<Vec<RecordBatch>, DataFusionError>> + Send>>;

/// One open window's plan execution. It starts with the window's first passing row, so a
/// window whose rows all fail the WHERE clause costs no execution and yields no rows.
enum OpenWindow {
    /// No row has reached the plan yet.
    Idle,
    /// Fed through the channel; polled after each batch, so the plan folds rows in as
    /// they come and no task has to be woken.
    Running {
        tx: feed_channel::UnboundedSender<RecordBatch>,
        run: WindowRun,
    },
    /// The execution ended before its input did (it failed).
    Ended(Result<Vec<RecordBatch>, DataFusionError>),
}

impl OpenWindow {
    /// Feeds the rows `rows` of `batch` (all of them when that is every row), with the
    /// window's bounds as engine columns.
    fn feed_rows(
        &mut self,
        rule: &Arc<CompiledRule>,
        batch: &RecordBatch,
        rows: Vec<u32>,
        (start, end): (EpochMs, EpochMs),
    ) -> Result<(), DataFusionError> {
        let rows = (rows.len() < batch.num_rows()).then(|| UInt32Array::from(rows));
        self.feed(
            rule,
            rule.input_of(batch, rows.as_ref(), EngineColumns::Window { start, end })?,
        )
    }

    /// Feeds one batch and lets the plan fold in what it has been fed.
    fn feed(&mut self, rule: &Arc<CompiledRule>, batch: RecordBatch) -> Result<(), DataFusionError> {
        if matches!(self, OpenWindow::Idle) {
            let (tx, rx) = feed_channel::unbounded::<RecordBatch>();
            let input = Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&rule.feed_schema), rx.map(Ok)));
            let stream = rule.execute(input)?;
            *self = OpenWindow::Running {
                tx,
                run: Box::pin(collect(stream)),
            };
        }
        let OpenWindow::Running { tx, run } = self else {
            // Ended: its error is reported when the window closes.
            return Ok(());
        };
        let _ = tx.unbounded_send(batch);
        // The plan waits only on its input, which is the channel just fed; a pending poll
        // needs no wake-up, since the next feed or the close polls again.
        if let Poll::Ready(result) = run.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            *self = OpenWindow::Ended(result);
        }
        Ok(())
    }

    /// Ends the window's input and returns its result rows.
    async fn finish(self) -> Result<Vec<RecordBatch>, DataFusionError> {
        match self {
            OpenWindow::Idle => Ok(Vec::new()),
            OpenWindow::Running { tx, run } => {
                drop(tx);
                run.await
            }
            OpenWindow::Ended(result) => result,
        }
    }

    /// Ends the window's input, waits for its aggregation and has each member that
    /// judges the window step its lifecycle with its own result rows.
    async fn close(self, judges: &mut [Judge], start: EpochMs, end: EpochMs, event_ms: EpochMs, arrived_ns: u64) {
        let started = Instant::now();
        let aggregated = self.finish().await;
        if aggregated.is_ok()
            && let Some(judge) = judges.first()
        {
            let took_ns = started.elapsed().as_nanos() as u64;
            judge.ctx.metrics.record(Stage::WindowClose, took_ns);
        }
        for judge in judges.iter_mut().filter(|judge| judge.judge_from.covers(start, 0)) {
            let output = match &aggregated {
                Ok(batches) => judge.rule.finish_window(batches.clone()).await,
                Err(e) => {
                    judge.fail(e);
                    continue;
                }
            };
            match output {
                Ok(output) => judge_window(judge, &output, (start, end), event_ms, arrived_ns).await,
                Err(e) => judge.fail(&e),
            }
        }
    }
}

/// Steps a member's lifecycle with a closed window's result rows: a breach per row, a
/// clean step for every other live alert.
async fn judge_window(
    judge: &mut Judge,
    output: &[RecordBatch],
    (start, end): (EpochMs, EpochMs),
    event_ms: EpochMs,
    arrived_ns: u64,
) {
    judge.ctx.metrics.windows_closed.fetch_add(1, Ordering::Relaxed);
    judge.health.evaluated(end);
    let all_rows = output
        .iter()
        .enumerate()
        .flat_map(|(b, out)| (0..out.num_rows()).map(move |r| (b, r)));
    judge.capture(start, end, all_rows, output);
    let detected_ms = judge.detected(event_ms);
    let mut breached = HashSet::new();
    for out in output {
        for r in 0..out.num_rows() {
            let found = Found {
                window: Some((start, end)),
                event_ms: start,
                detected_ms,
                arrived_ns,
            };
            breached.insert(judge.breach_row(out, r, found).await);
        }
    }
    let step = CleanStep {
        window: Some((start, end)),
        detected_ms,
        arrived_ns,
    };
    for t in judge.lifecycle.clean_all_except(&breached, step) {
        judge.emit(t).await;
    }
}
