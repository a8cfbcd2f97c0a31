//! Session window rules: rows are gathered per key into sessions (`rules::session`);
//! closed sessions are evaluated together, one plan execution per set of distinct keys.

use super::*;

impl RuleWorker {
    // ---- session rules ---------------------------------------------------------------

    pub(super) async fn on_session_batch(&mut self, input: &TableBatch) -> Result<(), DataFusionError> {
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
    pub(super) async fn judge_sessions(
        &mut self,
        closed: Vec<ClosedSession>,
        arrivals: &[u64],
    ) -> Result<(), DataFusionError> {
        let (judge_from, gap_ms) = (self.judge_from, self.sessions.as_ref().map_or(0, |s| s.gap_ms()));
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
                    fed.push(self.rule.input_of(
                        part,
                        None,
                        EngineColumns::Window {
                            start: session.start,
                            end: session.end,
                        },
                    )?);
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
                self.health.evaluated(session.end);
                let window = Some((session.start, session.end));
                let detected_ms = self.detected(session.event_ms);
                let rows = rows_by_key.remove(&session.key_id);
                self.capture(session.start, session.end, rows.iter().flatten().copied(), &output);
                match rows {
                    Some(rows) => {
                        for (b, r) in rows {
                            let found = Found {
                                window,
                                event_ms: session.start,
                                detected_ms,
                                arrived_ns,
                            };
                            self.breach_row(&output[b], r, found).await;
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

    pub(super) async fn idle_sessions(&mut self, now_ms: EpochMs, last_arrival_ms: EpochMs, arrived_ns: u64) {
        let Some(sessions) = self.sessions.as_mut() else { return };
        let Some(row_max_ts) = sessions.row_max_ts() else {
            return;
        };
        let closed = sessions.advance_to(row_max_ts + (now_ms - last_arrival_ms).max(0));
        let arrivals = vec![arrived_ns; closed.len()];
        if let Err(e) = self.judge_sessions(closed, &arrivals).await {
            self.fail(&e);
        }
    }

    pub(super) async fn end_sessions(&mut self, arrived_ns: u64) {
        let Some(sessions) = self.sessions.as_mut() else { return };
        let closed = sessions.close_all();
        let arrivals = vec![arrived_ns; closed.len()];
        if let Err(e) = self.judge_sessions(closed, &arrivals).await {
            self.fail(&e);
        }
    }
}
