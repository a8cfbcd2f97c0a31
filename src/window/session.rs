//! Session windows (hot path, pure but for Arrow `take`): per key, a session is
//! [first row, last row + gap); a row within `gap` of a session joins it, and a row that
//! bridges two sessions merges them. A session closes when the watermark (max `ts` seen −
//! lateness) reaches its end; a row whose own session [ts, ts + gap) would already have
//! closed is late. Rows are judged in arrival order, so batching never changes results.

use std::collections::{BTreeSet, HashMap};

use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::error::ArrowError;

use crate::state::snapshot::{SessionSnapshot, SessionsSnapshot};
use crate::time::EpochMs;

/// One open session of one key.
#[derive(Debug)]
struct Session {
    start: EpochMs,
    last: EpochMs,
    /// Rows gathered from earlier batches.
    parts: Vec<RecordBatch>,
    /// Rows of the batch being routed.
    pending: Vec<u32>,
}

/// A session the watermark has passed, with its rows.
#[derive(Debug)]
pub(crate) struct ClosedSession {
    pub key_id: String,
    pub start: EpochMs,
    pub end: EpochMs,
    pub parts: Vec<RecordBatch>,
    /// Max event time when it closed (the detection clock in replay).
    pub event_ms: EpochMs,
    /// The row (in the batch being routed) whose arrival closed it, if a row did.
    pub row: Option<usize>,
}

/// What routing one batch produced.
#[derive(Debug, Default)]
pub(crate) struct SessionRouting {
    pub late: Vec<u32>,
    /// Sessions closed, in order of closing.
    pub closed: Vec<ClosedSession>,
}

/// Names the group of a row (a rule's key columns) as one string: rows with equal names
/// share sessions.
pub(crate) type RowKey = Box<dyn Fn(&RecordBatch, usize) -> String + Send + Sync>;

/// The session state of one rule.
pub(crate) struct Sessions {
    gap_ms: EpochMs,
    lateness_ms: EpochMs,
    key: RowKey,
    open: HashMap<String, Vec<Session>>,
    /// (end, key, start) of every open session, to find the ones a watermark closes.
    by_end: BTreeSet<(EpochMs, String, EpochMs)>,
    max_ts: Option<EpochMs>,
    /// Max `ts` of rows (idle advances excluded), the base of idle time.
    row_max_ts: Option<EpochMs>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("gap_ms", &self.gap_ms)
            .field("lateness_ms", &self.lateness_ms)
            .field("open", &self.open.len())
            .field("max_ts", &self.max_ts)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub(crate) fn new(gap_ms: EpochMs, lateness_ms: EpochMs, key: RowKey) -> Self {
        Sessions {
            gap_ms,
            lateness_ms: lateness_ms.max(0),
            key,
            open: HashMap::new(),
            by_end: BTreeSet::new(),
            max_ts: None,
            row_max_ts: None,
        }
    }

    /// The inactivity gap that ends a session.
    /// Every open session with its rows, as checkpoint data (sessions in key order).
    pub(crate) fn snapshot(&self) -> SessionsSnapshot {
        let mut keys: Vec<&String> = self.open.keys().collect();
        keys.sort();
        let mut sessions = Vec::new();
        let mut rows = Vec::new();
        for key in keys {
            for session in &self.open[key] {
                sessions.push(SessionSnapshot {
                    key: key.clone(),
                    start: session.start,
                    last: session.last,
                    batches: session.parts.len(),
                });
                rows.extend(session.parts.iter().cloned());
            }
        }
        SessionsSnapshot {
            max_ts: self.max_ts,
            row_max_ts: self.row_max_ts,
            sessions,
            rows,
        }
    }

    /// Takes back the sessions of a checkpoint.
    pub(crate) fn restore(&mut self, snapshot: SessionsSnapshot) {
        self.open.clear();
        self.by_end.clear();
        self.max_ts = snapshot.max_ts;
        self.row_max_ts = snapshot.row_max_ts;
        let mut rows = snapshot.rows.into_iter();
        for s in snapshot.sessions {
            let parts: Vec<RecordBatch> = rows.by_ref().take(s.batches).collect();
            self.by_end.insert((s.last + self.gap_ms, s.key.clone(), s.start));
            self.open.entry(s.key).or_default().push(Session {
                start: s.start,
                last: s.last,
                parts,
                pending: Vec::new(),
            });
        }
    }

    /// Sessions open now, over every key.
    pub(crate) fn open_count(&self) -> usize {
        self.by_end.len()
    }

    pub(crate) fn gap_ms(&self) -> EpochMs {
        self.gap_ms
    }

    pub(crate) fn row_max_ts(&self) -> Option<EpochMs> {
        self.row_max_ts
    }

    fn watermark(&self) -> Option<EpochMs> {
        self.max_ts.map(|m| m - self.lateness_ms)
    }

    /// Routes a batch (its first column is `ts`) into sessions, closing the ones the
    /// watermark passes as it moves row by row.
    pub(crate) fn route(&mut self, batch: &RecordBatch) -> Result<SessionRouting, ArrowError> {
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let mut routing = SessionRouting::default();
        let mut closed_pending: Vec<(ClosedSession, Vec<u32>)> = Vec::new();
        for i in 0..batch.num_rows() {
            let t = ts.value(i);
            let key_id = (self.key)(batch, i);
            if !self.add(key_id, t, i as u32) {
                routing.late.push(i as u32);
            }
            self.row_max_ts = self.row_max_ts.max(Some(t));
            if self.max_ts.is_none_or(|m| t > m) {
                self.max_ts = Some(t);
                closed_pending.extend(self.close_passed(t, Some(i)));
            }
        }
        // Materialise this batch's rows: for closed sessions and for those still open.
        for (mut session, rows) in closed_pending {
            if !rows.is_empty() {
                session.parts.push(take_record_batch(batch, &UInt32Array::from(rows))?);
            }
            routing.closed.push(session);
        }
        for session in self.open.values_mut().flatten() {
            if !session.pending.is_empty() {
                let rows = std::mem::take(&mut session.pending);
                session.parts.push(take_record_batch(batch, &UInt32Array::from(rows))?);
            }
        }
        Ok(routing)
    }

    /// Moves event time forward without a row (idle table).
    pub(crate) fn advance_to(&mut self, event_ms: EpochMs) -> Vec<ClosedSession> {
        if self.max_ts.is_some_and(|m| event_ms <= m) {
            return Vec::new();
        }
        self.max_ts = Some(event_ms);
        self.close_passed(event_ms, None).into_iter().map(|(s, _)| s).collect()
    }

    /// Closes every open session (end of input).
    pub(crate) fn close_all(&mut self) -> Vec<ClosedSession> {
        let event_ms = self.max_ts.unwrap_or_default();
        let ends: Vec<(EpochMs, String, EpochMs)> = std::mem::take(&mut self.by_end).into_iter().collect();
        let mut closed = Vec::with_capacity(ends.len());
        for (_, key, start) in ends {
            if let Some((session, _)) = self.take(&key, start) {
                closed.push(self.closed(key, session, event_ms, None));
            }
        }
        closed
    }

    /// Adds a row to its key's sessions, merging the ones it touches (as Flink does).
    /// Returns false when the row is late: its session would already have closed.
    fn add(&mut self, key_id: String, t: EpochMs, row: u32) -> bool {
        let gap = self.gap_ms;
        let touches = |s: &Session| t <= s.last + gap && s.start <= t + gap;
        let joins_open = self.open.get(&key_id).is_some_and(|list| list.iter().any(touches));
        if !joins_open && self.watermark().is_some_and(|w| t + gap <= w) {
            return false;
        }
        let sessions = self.open.entry(key_id.clone()).or_default();
        let mut merged = Session {
            start: t,
            last: t,
            parts: Vec::new(),
            pending: vec![row],
        };
        let mut kept = Vec::with_capacity(sessions.len());
        for s in sessions.drain(..) {
            let overlaps = touches(&s);
            if overlaps {
                self.by_end.remove(&(s.last + gap, key_id.clone(), s.start));
                merged.start = merged.start.min(s.start);
                merged.last = merged.last.max(s.last);
                merged.parts.extend(s.parts);
                merged.pending.extend(s.pending);
            } else {
                kept.push(s);
            }
        }
        merged.pending.sort_unstable();
        self.by_end.insert((merged.last + gap, key_id, merged.start));
        kept.push(merged);
        kept.sort_by_key(|s| s.start);
        *sessions = kept;
        true
    }

    fn close_passed(&mut self, max_ts: EpochMs, row: Option<usize>) -> Vec<(ClosedSession, Vec<u32>)> {
        let watermark = max_ts - self.lateness_ms;
        let mut closed = Vec::new();
        while let Some((end, key, start)) = self.by_end.first().cloned() {
            if end > watermark {
                break;
            }
            self.by_end.pop_first();
            if let Some((session, pending)) = self.take(&key, start) {
                closed.push((self.closed(key, session, max_ts, row), pending));
            }
        }
        closed
    }

    fn take(&mut self, key: &str, start: EpochMs) -> Option<(Session, Vec<u32>)> {
        let sessions = self.open.get_mut(key)?;
        let index = sessions.iter().position(|s| s.start == start)?;
        let mut session = sessions.remove(index);
        if sessions.is_empty() {
            self.open.remove(key);
        }
        let pending = std::mem::take(&mut session.pending);
        Some((session, pending))
    }

    fn closed(&self, key_id: String, session: Session, event_ms: EpochMs, row: Option<usize>) -> ClosedSession {
        ClosedSession {
            key_id,
            start: session.start,
            end: session.last + self.gap_ms,
            parts: session.parts,
            event_ms,
            row,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    const MIN: i64 = 60_000;

    fn batch(rows: &[(i64, &str)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("ts", crate::schema::timestamp_type(), false),
            Field::new("device_id", DataType::Utf8, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(
                    TimestampMillisecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>()).with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            ],
        )
        .expect("valid batch")
    }

    fn by_device() -> RowKey {
        Box::new(|batch, row| batch.column(1).as_string::<i32>().value(row).to_string())
    }

    fn sessions() -> Sessions {
        Sessions::new(2 * MIN, 0, by_device())
    }

    fn shown(closed: &[ClosedSession]) -> Vec<(String, i64, i64, usize)> {
        closed
            .iter()
            .map(|c| {
                (
                    c.key_id.clone(),
                    c.start / MIN,
                    c.end / MIN,
                    c.parts.iter().map(|p| p.num_rows()).sum(),
                )
            })
            .collect()
    }

    #[test]
    fn sessions_are_kept_per_key_and_close_gap_after_their_last_row() {
        let mut s = sessions();
        let r = s
            .route(&batch(&[
                (5 * MIN, "a"),
                (7 * MIN, "a"),
                (9 * MIN, "b"),
                (11 * MIN, "b"),
            ]))
            .expect("routes");
        assert_eq!(
            shown(&r.closed),
            vec![("a".to_string(), 5, 9, 2)],
            "5 and 7 touch; [5, 9) closes when b's 9 arrives"
        );
        let rest = s.close_all();
        assert_eq!(shown(&rest), vec![("b".to_string(), 9, 13, 2)]);
    }

    #[test]
    fn a_row_bridging_two_sessions_merges_them() {
        let mut s = Sessions::new(2 * MIN, 10 * MIN, by_device());
        s.route(&batch(&[(0, "a"), (3 * MIN, "a")])).expect("routes");
        s.route(&batch(&[(90_000, "a")])).expect("routes");
        assert_eq!(shown(&s.close_all()), vec![("a".to_string(), 0, 5, 3)]);
    }

    #[test]
    fn a_row_whose_session_would_already_have_closed_is_late() {
        let mut s = sessions();
        let r = s
            .route(&batch(&[(0, "a"), (10 * MIN, "b"), (MIN, "a")]))
            .expect("routes");
        assert_eq!(r.late, vec![2]);
        assert_eq!(shown(&r.closed), vec![("a".to_string(), 0, 2, 1)]);
    }
}
