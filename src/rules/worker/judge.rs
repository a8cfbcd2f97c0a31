//! The part of a rule worker every kind of rule shares: the compiled rule, its alert
//! lifecycle, the pipeline's channels and the rule's counters. A kind's handlers
//! (`rows`, `windows`, `sessions`, `snapshots`) evaluate the plan and hand the result rows
//! here: `Judge` steps the lifecycle, stamps detection times, emits the warnings, counts
//! failures, dead-letters late rows and captures closed windows' results.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;

use super::{DetectionClock, WindowResult, WorkerContext};
use crate::alert::lifecycle::{Evidence, Lifecycle, Transition};
use crate::alert::sink::Notice;
use crate::alert::warning::Warning;
use crate::flow::TableBatch;
use crate::level::Level;
use crate::metrics::{LocalLatency, RuleHealth};
use crate::rules::compile::CompiledRule;
use crate::rules::output::{key_of, level_of, result_json, values_of};
use crate::time::{EpochMs, wall_now_ms};

/// Judges one rule's result rows into alert transitions and reports what went wrong.
pub(super) struct Judge {
    pub(super) rule: Arc<CompiledRule>,
    pub(super) lifecycle: Lifecycle,
    pub(super) ctx: WorkerContext,
    /// This rule's live counters (`/api/rules`).
    pub(super) health: Arc<RuleHealth>,
    /// A version swapped in mid-stream judges only windows (and sessions) that start at or
    /// after its first row, so every window it judges saw all of its rows.
    pub(super) judge_from: JudgeFrom,
    pub(super) errors: u64,
    /// The latest evaluation error, when there was one.
    pub(super) last_error: Option<String>,
    /// From a row's arrival to its warning's emission.
    pub(super) detection_latency: LocalLatency,
}

/// Which windows a rule version judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JudgeFrom {
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
    pub(super) fn covers(self, start: EpochMs, lead: i64) -> bool {
        match self {
            JudgeFrom::Start => true,
            JudgeFrom::FirstRow => false,
            JudgeFrom::Ts(from) => start >= from.saturating_add(lead),
        }
    }
}

/// Where and when a result row was found: the part of a breach the caller knows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Found {
    pub(super) window: Option<(EpochMs, EpochMs)>,
    /// Event time of the breach (a window's or session's start, a snapshot's time).
    pub(super) event_ms: EpochMs,
    pub(super) detected_ms: EpochMs,
    pub(super) arrived_ns: u64,
}

impl Judge {
    pub(super) fn new(rule: Arc<CompiledRule>, ctx: WorkerContext, health: Arc<RuleHealth>) -> Self {
        Judge {
            lifecycle: Lifecycle::new(&rule.id, rule.policy),
            rule,
            ctx,
            health,
            judge_from: JudgeFrom::Start,
            errors: 0,
            last_error: None,
            detection_latency: LocalLatency::new(),
        }
    }

    /// Counts a failed evaluation; the rule goes on.
    pub(super) fn fail(&mut self, error: &DataFusionError) {
        self.errors += 1;
        self.last_error = Some(error.strip_backtrace());
        self.health.failed(&error.strip_backtrace());
        self.ctx.metrics.rule_errors.fetch_add(1, Ordering::Relaxed);
        // The first failures are logged in full; later ones are counted (see the summary).
        if self.errors <= 3 {
            tracing::warn!(rule = %self.rule.id, error = %error.strip_backtrace(), "rule evaluation failed; the rule goes on (fix the rule, or raise engine.rule_memory_limit_mb if the error says resources exhausted)");
        }
    }

    /// Marks the rows (positions in `input`) that arrived after every window of the rule
    /// holding them had closed: counted here per rule, dead-lettered once per row by the
    /// batch (`flow::LateRows`) with every rule it was late for.
    pub(super) fn dead_letter_late(&self, input: &TableBatch, late: &[u32]) {
        if late.is_empty() {
            return;
        }
        self.ctx
            .metrics
            .add_late(&self.ctx.table_name, &self.rule.id, late.len() as u64);
        input.late.mark(late, &self.rule.id);
    }

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
    pub(super) async fn breach_row(&mut self, out: &RecordBatch, row: usize, found: Found) -> String {
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

    /// A result row's level: its `level` column, else the header's; a bad value is counted
    /// as a failure and the header's level used.
    pub(super) fn level(&mut self, out: &RecordBatch, row: usize) -> Level {
        match level_of(out, row, self.rule.layout.level, self.rule.level) {
            Ok(level) => level,
            Err(message) => {
                self.fail(&DataFusionError::Execution(format!("bad level value: {message}")));
                self.rule.level
            }
        }
    }

    /// When something found at `event_ms` counts as detected, by the pipeline's clock.
    pub(super) fn detected(&self, event_ms: EpochMs) -> EpochMs {
        match self.ctx.clock {
            DetectionClock::EventTime => event_ms,
            DetectionClock::Wall => wall_now_ms(),
        }
    }

    /// Sends a lifecycle transition to the sink as a warning.
    pub(super) async fn emit(&mut self, transition: Transition) {
        let emit_ns = self.ctx.metrics.now_ns();
        self.detection_latency
            .record(emit_ns.saturating_sub(transition.arrived_ns));
        let warning = Warning::from_transition(&self.rule.info, transition, emit_ns);
        // The sink ends only after every rule; a closed queue means shutdown is under way.
        let _ = self.ctx.warnings.send(Notice::Warning(warning)).await;
    }
}
