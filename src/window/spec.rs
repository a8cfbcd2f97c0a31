//! Window geometry (pure): the window kinds a rule groups by, where their windows start
//! and end, and which windows hold a row. Windows are [start, end), aligned to the epoch.

/// The window a rule aggregates over. Windows are [start, end), aligned to the epoch.
/// For every kind, window ends are spaced `step_ms` apart and each end has one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size_ms`.
    Tumble { size_ms: i64 },
    /// Windows of `size_ms` starting every `slide_ms`; a row is in every window covering it.
    Hop { slide_ms: i64, size_ms: i64 },
    /// Windows sharing a start every `max_size_ms`, growing by `step_ms`.
    Cumulate { step_ms: i64, max_size_ms: i64 },
}

impl WindowSpec {
    /// The spacing of window ends.
    pub fn step_ms(&self) -> i64 {
        match *self {
            WindowSpec::Tumble { size_ms } => size_ms,
            WindowSpec::Hop { slide_ms, .. } => slide_ms,
            WindowSpec::Cumulate { step_ms, .. } => step_ms,
        }
    }

    /// The window that ends at `end` (a multiple of `step_ms`).
    pub fn window_ending_at(&self, end: i64) -> (i64, i64) {
        match *self {
            WindowSpec::Tumble { size_ms } | WindowSpec::Hop { size_ms, .. } => (end - size_ms, end),
            WindowSpec::Cumulate { max_size_ms, .. } => ((end - 1).div_euclid(max_size_ms) * max_size_ms, end),
        }
    }

    /// The latest end among the windows holding `ts`.
    pub fn last_end_of(&self, ts: i64) -> i64 {
        match *self {
            WindowSpec::Tumble { size_ms } => ts.div_euclid(size_ms) * size_ms + size_ms,
            WindowSpec::Hop { slide_ms, size_ms } => ts.div_euclid(slide_ms) * slide_ms + size_ms,
            WindowSpec::Cumulate { max_size_ms, .. } => ts.div_euclid(max_size_ms) * max_size_ms + max_size_ms,
        }
    }

    /// The ends of every window holding `ts`, in increasing order.
    pub fn ends_of(&self, ts: i64) -> impl Iterator<Item = i64> {
        let step = self.step_ms();
        let first = ts.div_euclid(step) * step + step;
        let last = self.last_end_of(ts);
        (0..).map(move |k| first + k * step).take_while(move |end| *end <= last)
    }
}

/// How a rule's rows are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Windowing {
    /// Epoch-aligned windows shared by every key (tumble, hop, cumulate).
    Aligned(WindowSpec),
    /// Per-key sessions that end `gap_ms` after their last row.
    Session { gap_ms: i64 },
}
