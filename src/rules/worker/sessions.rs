//! Session window rules: rows are gathered per key into sessions (`window::Sessions`);
//! closed sessions are evaluated together, one plan execution per set of distinct keys.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use datafusion::error::DataFusionError;
use datafusion::physical_plan::common::collect;

use super::judge::{Found, Judge};
use crate::alert::lifecycle::{AlertKey, CleanStep};
use crate::flow::TableBatch;
use crate::metrics::Stage;
use crate::rules::compile::EngineColumns;
use crate::rules::output::key_of;
use crate::state::snapshot::SessionsSnapshot;
use crate::time::EpochMs;
use crate::window::{ClosedSession, RowKey, Sessions, idle_event_ms};

/// A session rule's state: the sessions open now, per key.
pub(super) struct SessionState {
    sessions: Sessions,
}

impl SessionState {
    pub(super) fn new(gap_ms: EpochMs, lateness_ms: EpochMs, key_columns: Vec<(String, usize)>) -> Self {
        // Rows share a session when their GROUP BY values are equal.
        let key: RowKey = Box::new(move |batch, row| key_of(batch, row, &key_columns).id);
        SessionState {
            sessions: Sessions::new(gap_ms, lateness_ms, key),
        }
    }

    /// The open sessions with their rows, as checkpoint data.
    pub(super) fn snapshot(&self) -> SessionsSnapshot {
        self.sessions.snapshot()
    }

    /// Takes back a checkpoint's sessions.
    pub(super) fn restore(&mut self, saved: SessionsSnapshot) {
        self.sessions.restore(saved);
    }

    /// How many sessions are open.
    pub(super) fn open_sessions(&self) -> usize {
        self.sessions.open_count()
    }

    /// Adds a batch's rows to their sessions; judges the sessions its event time closed.
    pub(super) async fn on_batch(&mut self, judge: &mut Judge, input: &TableBatch) -> Result<(), DataFusionError> {
        let routing = self.sessions.route(&input.batch)?;
        judge.dead_letter_late(input, &routing.late);
        let now_ns = judge.ctx.metrics.now_ns();
        let arrivals: Vec<u64> = routing
            .closed
            .iter()
            .map(|c| c.row.map(|r| input.arrivals_ns[r]).unwrap_or(now_ns))
            .collect();
        judge_sessions(judge, self.sessions.gap_ms(), routing.closed, &arrivals).await
    }

    /// The table is idle: event time is taken to advance with the clock since its last row.
    pub(super) async fn on_idle(
        &mut self,
        judge: &mut Judge,
        now_ms: EpochMs,
        last_arrival_ms: EpochMs,
        arrived_ns: u64,
    ) {
        let Some(row_max_ts) = self.sessions.row_max_ts() else {
            return;
        };
        let closed = self
            .sessions
            .advance_to(idle_event_ms(row_max_ts, now_ms, last_arrival_ms));
        let arrivals = vec![arrived_ns; closed.len()];
        if let Err(e) = judge_sessions(judge, self.sessions.gap_ms(), closed, &arrivals).await {
            judge.fail(&e);
        }
    }

    /// The input ended: every open session is closed and judged.
    pub(super) async fn on_end(&mut self, judge: &mut Judge, arrived_ns: u64) {
        let closed = self.sessions.close_all();
        let arrivals = vec![arrived_ns; closed.len()];
        if let Err(e) = judge_sessions(judge, self.sessions.gap_ms(), closed, &arrivals).await {
            judge.fail(&e);
        }
    }
}

/// Evaluates closed sessions — one plan execution for as many as have distinct keys —
/// and steps each session's alert: a breach per result row, a clean step otherwise.
async fn judge_sessions(
    judge: &mut Judge,
    gap_ms: EpochMs,
    closed: Vec<ClosedSession>,
    arrivals: &[u64],
) -> Result<(), DataFusionError> {
    let judge_from = judge.judge_from;
    let mut remaining: Vec<(ClosedSession, u64)> = closed
        .into_iter()
        .zip(arrivals.iter().copied())
        // A session that may have begun before this version took over is its predecessor's.
        .filter(|(session, _)| judge_from.covers(session.start, gap_ms))
        .collect();
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
                fed.push(judge.rule.input_of(
                    part,
                    None,
                    EngineColumns::Window {
                        start: session.start,
                        end: session.end,
                    },
                )?);
            }
        }
        let output = collect(judge.rule.execute(judge.rule.stream_of(fed))?).await?;
        judge
            .ctx
            .metrics
            .windows_closed
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        judge
            .ctx
            .metrics
            .record(Stage::WindowClose, started.elapsed().as_nanos() as u64);
        // Result rows go to their session by its GROUP BY values (one session per key here).
        let rule = Arc::clone(&judge.rule);
        let partition = &rule.session_key;
        let mut rows_by_key: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (b, out) in output.iter().enumerate() {
            for r in 0..out.num_rows() {
                rows_by_key
                    .entry(key_of(out, r, &partition.output).id)
                    .or_default()
                    .push((b, r));
            }
        }
        let one_alert_per_partition = partition.is_alert_key(&rule.layout);
        // Keyed by window, a partition's earlier sessions are alerts of their own: found
        // once per group (its sessions are of distinct partitions), not per session.
        let mut earlier: HashMap<String, Vec<String>> = HashMap::new();
        if !one_alert_per_partition {
            for key in judge.lifecycle.keys() {
                let fields = partition
                    .in_alert_key
                    .iter()
                    .filter_map(|&i| key.fields.get(i).cloned());
                earlier
                    .entry(AlertKey::new(fields.collect()).id)
                    .or_default()
                    .push(key.id.clone());
            }
        }
        for (session, arrived_ns) in group {
            judge.health.evaluated(session.end);
            let window = Some((session.start, session.end));
            let detected_ms = judge.detected(session.event_ms);
            let rows = rows_by_key.remove(&session.key_id);
            judge.capture(session.start, session.end, rows.iter().flatten().copied(), &output);
            let mut breached = HashSet::new();
            for (b, r) in rows.into_iter().flatten() {
                let found = Found {
                    window,
                    event_ms: session.start,
                    detected_ms,
                    arrived_ns,
                };
                breached.insert(judge.breach_row(&output[b], r, found).await);
            }
            let step = CleanStep {
                window,
                detected_ms,
                arrived_ns,
            };
            // A clean step for the partition's alerts this session did not breach: its own
            // alert, or (keyed by window) the alerts of its earlier sessions.
            let cleaned: Vec<_> = if one_alert_per_partition {
                match breached.is_empty() {
                    true => judge.lifecycle.clean(&session.key_id, step).into_iter().collect(),
                    false => Vec::new(),
                }
            } else {
                let mut ids = earlier.remove(&session.key_id).unwrap_or_default();
                ids.sort();
                ids.iter()
                    .filter(|id| !breached.contains(*id))
                    .filter_map(|id| judge.lifecycle.clean(id, step))
                    .collect()
            };
            for transition in cleaned {
                judge.emit(transition).await;
            }
        }
    }
    Ok(())
}
