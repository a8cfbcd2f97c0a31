//! Epoch-aligned window rules (tumble, hop, cumulate): each batch's rows are routed to
//! their open windows, whose plan executions run concurrently and are fed as rows arrive;
//! when the watermark passes a window's end its stream is ended and its rows judged.

use super::*;

type WindowTask = JoinHandle<Result<Vec<RecordBatch>, DataFusionError>>;

/// One open window: the sender feeding its plan execution and the task driving it.
pub(super) struct OpenWindow {
    tx: feed_channel::UnboundedSender<RecordBatch>,
    task: WindowTask,
}

pub(super) struct Windows {
    pub(super) clock: WindowClock,
    /// Open windows by end (each end has one window).
    pub(super) open: BTreeMap<EpochMs, OpenWindow>,
    /// Every window ending at or before this has been closed and judged.
    pub(super) judged_through: Option<EpochMs>,
    /// Max `ts` of the rows themselves (idle advances excluded), the base of idle time.
    pub(super) row_max_ts: Option<EpochMs>,
}

impl RuleWorker {
    // ---- window rules ----------------------------------------------------------------

    pub(super) async fn on_window_batch(&mut self, input: &TableBatch) -> Result<(), DataFusionError> {
        let judge_from = self.judge_from;
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
            let (start, _) = spec.window_ending_at(end);
            if !judge_from.covers(start, 0) {
                // Began before this version took over: its predecessor saw the first rows.
                continue;
            }
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

    pub(super) async fn idle_windows(&mut self, now_ms: EpochMs, last_arrival_ms: EpochMs, arrived_ns: u64) {
        let Some(windows) = self.windows.as_mut() else { return };
        let Some(row_max_ts) = windows.row_max_ts else { return };
        // Event time is taken to advance with the clock since the table's last row.
        let event_ms = row_max_ts + (now_ms - last_arrival_ms).max(0);
        if let Some(advance) = windows.clock.advance_to(event_ms) {
            self.judge_through(advance.boundary, advance.event_ms, arrived_ns).await;
        }
    }

    pub(super) async fn end_windows(&mut self, arrived_ns: u64) {
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
    pub(super) async fn judge_through(&mut self, boundary: EpochMs, event_ms: EpochMs, arrived_ns: u64) {
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
            if !self.judge_from.covers(start, 0) {
                continue;
            }
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
    pub(super) async fn close(
        &mut self,
        window: OpenWindow,
        start: EpochMs,
        end: EpochMs,
        event_ms: EpochMs,
        arrived_ns: u64,
    ) {
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
        self.health.evaluated(end);
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
                let found = Found {
                    window: Some((start, end)),
                    event_ms: start,
                    detected_ms,
                    arrived_ns,
                };
                breached.insert(self.breach_row(out, r, found).await);
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
pub(super) fn with_window(
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
