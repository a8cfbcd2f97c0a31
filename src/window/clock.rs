//! Event time for one window rule (hot path, pure): window assignment, the watermark
//! (max `ts` seen − lateness), late rows, and the points where the watermark passes window
//! ends. A batch is judged row by row in arrival order, so results never depend on how
//! rows were batched: a row arriving after the row that closed its window is late even
//! when both came in the same batch. Windows are [start, end), aligned to the epoch, and
//! identified by their end (every window kind has one window per end; see `WindowSpec`).

use crate::time::EpochMs;
use crate::window::WindowSpec;

/// Event time of an idle table (DESIGN.md, Time): it advances with the clock since the
/// table's last row arrived, from that row's largest `ts`.
pub(crate) fn idle_event_ms(row_max_ts: EpochMs, now_ms: EpochMs, last_arrival_ms: EpochMs) -> EpochMs {
    row_max_ts + (now_ms - last_arrival_ms).max(0)
}

/// The watermark moved: every window with `end <= boundary` is now closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// The greatest window end at or below the new watermark.
    pub boundary: EpochMs,
    /// Index (in the batch) of the row that moved the watermark, if a row did.
    pub row: Option<usize>,
    /// Max event time seen when it moved (the detection clock in replay).
    pub event_ms: EpochMs,
}

/// Where each row of a batch goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Routing {
    /// (window end, row indices) for rows in open windows, in order of end.
    pub windows: Vec<(EpochMs, Vec<u32>)>,
    /// Rows whose every window had already closed.
    pub late: Vec<u32>,
    /// Watermark advances across window ends, in order.
    pub advances: Vec<Advance>,
}

/// The event-time state of one window rule.
#[derive(Debug, Clone)]
pub struct WindowClock {
    spec: WindowSpec,
    lateness_ms: EpochMs,
    max_ts: Option<EpochMs>,
    /// Every window ending at or before this is closed.
    closed_through: Option<EpochMs>,
}

impl WindowClock {
    pub fn new(spec: WindowSpec, lateness_ms: i64) -> Self {
        WindowClock {
            spec,
            lateness_ms: lateness_ms.max(0),
            max_ts: None,
            closed_through: None,
        }
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// Max event time seen so far.
    pub fn max_ts(&self) -> Option<EpochMs> {
        self.max_ts
    }

    /// Every window ending at or before this is closed.
    pub fn closed_through(&self) -> Option<EpochMs> {
        self.closed_through
    }

    /// Puts the clock where a checkpoint found it.
    pub(crate) fn restore(&mut self, max_ts: Option<EpochMs>, closed_through: Option<EpochMs>) {
        self.max_ts = max_ts;
        self.closed_through = closed_through;
    }

    /// The window end at or below `watermark`.
    fn boundary(&self, watermark: EpochMs) -> EpochMs {
        let step = self.spec.step_ms();
        watermark.div_euclid(step) * step
    }

    /// Assigns a batch's rows (their `ts`, in arrival order) to windows. Rows in the same
    /// step interval (`[k·step, (k+1)·step)`) belong to the same windows, so the windows are
    /// worked out once per interval change and per watermark move, not once per row.
    pub fn route(&mut self, ts: &[EpochMs]) -> Routing {
        self.route_kept(ts, |_| true)
    }

    /// As `route`, but only rows for which `kept` holds (those passing the rule's WHERE
    /// clause) are listed under their windows. Every row still moves the watermark, opens
    /// its windows and, when late, is listed as late.
    pub fn route_kept(&mut self, ts: &[EpochMs], kept: impl Fn(usize) -> bool) -> Routing {
        let step = self.spec.step_ms();
        let mut routing = Routing::default();
        // The interval the last row fell in and where its rows go: `None` = late.
        let mut interval: Option<EpochMs> = None;
        let mut slots: Option<Vec<usize>> = None;
        for (i, &t) in ts.iter().enumerate() {
            if interval.is_none_or(|from| t < from || t - from >= step) {
                interval = Some(t.div_euclid(step) * step);
                slots = self.slots_of(t, &mut routing.windows, slots.take());
            }
            match &slots {
                Some(slots) if kept(i) => slots.iter().for_each(|&s| routing.windows[s].1.push(i as u32)),
                Some(_) => {}
                None => routing.late.push(i as u32),
            }
            if self.max_ts.is_none_or(|m| t > m) {
                self.max_ts = Some(t);
                if let Some(advance) = self.advance_watermark(t, Some(i)) {
                    routing.advances.push(advance);
                    // Windows closed: the next row's are worked out afresh.
                    interval = None;
                }
            }
        }
        routing.windows.sort_unstable_by_key(|(end, _)| *end);
        routing
    }

    /// Where a row at `t` goes: the positions in `windows` of its open windows (added when
    /// new), or `None` when every window holding it has closed. Reuses `room`.
    fn slots_of(
        &self,
        t: EpochMs,
        windows: &mut Vec<(EpochMs, Vec<u32>)>,
        room: Option<Vec<usize>>,
    ) -> Option<Vec<usize>> {
        let closed = self.closed_through;
        if closed.is_some_and(|closed| self.spec.last_end_of(t) <= closed) {
            return None;
        }
        let mut slots = room.unwrap_or_default();
        slots.clear();
        for end in self.spec.ends_of(t).filter(|end| closed.is_none_or(|c| *end > c)) {
            let slot = match windows.iter().rposition(|(e, _)| *e == end) {
                Some(slot) => slot,
                None => {
                    windows.push((end, Vec::new()));
                    windows.len() - 1
                }
            };
            slots.push(slot);
        }
        Some(slots)
    }

    /// Moves event time forward without a row (idle table): `event_ms` becomes the max.
    pub fn advance_to(&mut self, event_ms: EpochMs) -> Option<Advance> {
        if self.max_ts.is_some_and(|m| event_ms <= m) {
            return None;
        }
        self.max_ts = Some(event_ms);
        self.advance_watermark(event_ms, None)
    }

    fn advance_watermark(&mut self, max_ts: EpochMs, row: Option<usize>) -> Option<Advance> {
        // The watermark passes the next window end only once `max_ts − lateness` reaches it
        // (`closed_through` is a multiple of the step): most rows need no division.
        let watermark = max_ts - self.lateness_ms;
        if self
            .closed_through
            .is_some_and(|closed| watermark < closed + self.spec.step_ms())
        {
            return None;
        }
        let boundary = self.boundary(watermark);
        // The first row opens the clock: nothing was open before it, so nothing closes.
        self.closed_through.replace(boundary).map(|_| Advance {
            boundary,
            row,
            event_ms: max_ts,
        })
    }

    /// Window ends in (`after`, `through`], in order: the windows an advance closes.
    pub fn ends_between(&self, after: EpochMs, through: EpochMs) -> impl Iterator<Item = EpochMs> + use<> {
        let step = self.spec.step_ms();
        let first = self.boundary(after) + step;
        (0..)
            .map(move |k| first + k * step)
            .take_while(move |end| *end <= through)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn clock() -> WindowClock {
        WindowClock::new(WindowSpec::Tumble { size_ms: MIN }, 2_000)
    }

    #[test]
    fn rows_are_grouped_by_window_and_the_first_row_closes_nothing() {
        let mut c = clock();
        let r = c.route(&[10_000, 61_000, 20_000]);
        assert_eq!(r.windows, vec![(MIN, vec![0, 2]), (2 * MIN, vec![1])]);
        assert!(r.late.is_empty() && r.advances.is_empty());
    }

    #[test]
    fn the_watermark_closes_a_window_lateness_after_its_end() {
        let mut c = clock();
        c.route(&[10_000]);
        assert!(
            c.route(&[61_999]).advances.is_empty(),
            "watermark 59.999 s: window [0, 60 s) still open"
        );
        let r = c.route(&[62_000]);
        assert_eq!(
            r.advances,
            vec![Advance {
                boundary: MIN,
                row: Some(0),
                event_ms: 62_000
            }]
        );
    }

    #[test]
    fn a_row_after_the_closing_row_in_the_same_batch_is_late() {
        let mut c = clock();
        c.route(&[10_000]);
        let r = c.route(&[59_000, 62_000, 59_500]);
        assert_eq!(r.windows, vec![(MIN, vec![0]), (2 * MIN, vec![1])]);
        assert_eq!(r.late, vec![2]);
        assert_eq!(r.advances.len(), 1);
    }

    #[test]
    fn batching_does_not_change_the_outcome() {
        let ts = [5_000, 30_000, 61_000, 58_000, 63_000, 59_000, 125_000, 119_000];
        let mut whole = clock();
        let all = whole.route(&ts);
        let mut split = clock();
        let mut late = Vec::new();
        let mut advances = 0;
        for (offset, chunk) in ts.chunks(3).enumerate() {
            let r = split.route(chunk);
            late.extend(r.late.iter().map(|i| i + offset as u32 * 3));
            advances += r.advances.len();
        }
        assert_eq!(all.late, late);
        assert_eq!(
            all.late,
            vec![5, 7],
            "59 s comes after 63 s closed [0, 60 s); 119 s after 125 s closed [60 s, 120 s)"
        );
        assert_eq!(all.advances.len(), advances);
    }

    #[test]
    fn out_of_order_rows_within_lateness_are_included() {
        let mut c = clock();
        let r = c.route(&[10_000, 61_500, 59_000]);
        assert!(r.late.is_empty());
        assert_eq!(r.windows[0], (MIN, vec![0, 2]));
    }

    #[test]
    fn idle_advance_closes_windows_without_rows() {
        let mut c = clock();
        c.route(&[10_000]);
        let advance = c.advance_to(10_000 + 3 * MIN).expect("advances");
        assert_eq!(advance.boundary, 3 * MIN);
        assert_eq!(
            c.ends_between(0, advance.boundary).collect::<Vec<_>>(),
            vec![MIN, 2 * MIN, 3 * MIN]
        );
        assert_eq!(c.advance_to(5_000), None, "event time never goes back");
    }

    #[test]
    fn a_hop_row_goes_to_every_window_covering_it_and_is_late_only_when_all_closed() {
        let mut c = WindowClock::new(
            WindowSpec::Hop {
                slide_ms: MIN,
                size_ms: 3 * MIN,
            },
            0,
        );
        let r = c.route(&[150_000]);
        assert_eq!(
            r.windows,
            vec![(3 * MIN, vec![0]), (4 * MIN, vec![0]), (5 * MIN, vec![0])]
        );
        c.route(&[4 * MIN]); // closes windows ending at 3 and 4 min
        let r = c.route(&[150_000]);
        assert_eq!(
            r.windows,
            vec![(5 * MIN, vec![0])],
            "only the still-open window gets it"
        );
        c.route(&[5 * MIN]);
        assert_eq!(c.route(&[150_000]).late, vec![0]);
    }

    /// The routing of a batch worked out row by row, without any shortcut.
    fn route_row_by_row(c: &mut WindowClock, ts: &[EpochMs]) -> Routing {
        let mut windows: std::collections::BTreeMap<EpochMs, Vec<u32>> = Default::default();
        let mut routing = Routing::default();
        for (i, &t) in ts.iter().enumerate() {
            match c.closed_through {
                Some(closed) if c.spec.last_end_of(t) <= closed => routing.late.push(i as u32),
                closed => c
                    .spec
                    .ends_of(t)
                    .filter(|end| closed.is_none_or(|c| *end > c))
                    .for_each(|end| windows.entry(end).or_default().push(i as u32)),
            }
            if c.max_ts.is_none_or(|m| t > m) {
                c.max_ts = Some(t);
                routing.advances.extend(c.advance_watermark(t, Some(i)));
            }
        }
        routing.windows = windows.into_iter().collect();
        routing
    }

    #[test]
    fn routing_by_interval_matches_routing_row_by_row() {
        let specs = [
            WindowSpec::Tumble { size_ms: MIN },
            WindowSpec::Hop {
                slide_ms: 20_000,
                size_ms: MIN,
            },
            WindowSpec::Hop {
                slide_ms: 25_000,
                size_ms: MIN,
            },
            WindowSpec::Cumulate {
                step_ms: 15_000,
                max_size_ms: MIN,
            },
        ];
        // Mostly rising times with jitter, jumps back and far ahead: every path of `route`.
        let mut state = 7u64;
        let ts: Vec<EpochMs> = (0..3_000)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let jitter = (state >> 33) as i64 % 9_000 - 6_000;
                let jump = if i % 500 == 499 { 200_000 } else { 0 };
                i * 700 + jitter + jump * (i / 500)
            })
            .collect();
        // A WHERE mask (`route_kept`) only thins the window lists: the same windows open,
        // the same rows are late, the watermark moves at the same rows.
        let keep = |r: usize| r % 3 != 1;
        for spec in specs {
            for lateness in [0, 2_000, 30_000] {
                let mut fast = WindowClock::new(spec, lateness);
                let mut kept = WindowClock::new(spec, lateness);
                let mut slow = WindowClock::new(spec, lateness);
                for chunk in ts.chunks(97) {
                    let expected = route_row_by_row(&mut slow, chunk);
                    assert_eq!(fast.route(chunk), expected, "{spec:?}, lateness {lateness}");
                    let mut thinned = expected;
                    for (_, rows) in &mut thinned.windows {
                        rows.retain(|&r| keep(r as usize));
                    }
                    assert_eq!(
                        kept.route_kept(chunk, keep),
                        thinned,
                        "{spec:?}, lateness {lateness}, masked"
                    );
                }
                assert!(fast.closed_through.is_some());
            }
        }
    }
}
