//! Window functions in a rule's GROUP BY — `tumble(ts, size)`, `hop(ts, slide, size)`,
//! `cumulate(ts, step, max_size)`, `session(ts, gap)` — recognised and parsed into the
//! window kinds the engine runs, with their geometry (which windows hold a row).

use datafusion::sql::sqlparser::ast::{Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectNamePart, Value};

use super::sql::column_name;
use crate::time::parse_duration_ms;

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
pub enum Windowing {
    /// Epoch-aligned windows shared by every key (tumble, hop, cumulate).
    Aligned(WindowSpec),
    /// Per-key sessions that end `gap_ms` after their last row.
    Session { gap_ms: i64 },
}

/// The window functions a GROUP BY may hold.
const WINDOW_FUNCTIONS: [&str; 4] = ["tumble", "hop", "session", "cumulate"];

/// `tumble(...)` and friends, by lower-case name.
pub(super) fn window_call(expr: &Expr) -> Option<String> {
    let Expr::Function(f) = expr else { return None };
    let name = match f.name.0.last()? {
        ObjectNamePart::Identifier(ident) => ident.value.to_lowercase(),
        _ => return None,
    };
    WINDOW_FUNCTIONS.contains(&name.as_str()).then_some(name)
}

pub(super) fn parse_window(name: &str, expr: &Expr) -> Result<Windowing, String> {
    let Expr::Function(f) = expr else {
        return Err(format!("{name} must be called like {name}(ts, INTERVAL '1 minute')"));
    };
    let args: Vec<&Expr> = match &f.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let time_column = args.first().and_then(|e| column_name(e));
    if time_column.as_deref() != Some("ts") {
        return Err(format!("{name}'s first argument must be the event-time column ts"));
    }
    let durations: Result<Vec<i64>, String> = args[1..].iter().map(|e| interval_ms(e)).collect();
    let durations = durations?;
    let aligned = |spec: WindowSpec| Ok(Windowing::Aligned(spec));
    match (name, durations.as_slice()) {
        ("session", [gap]) if *gap > 0 => Ok(Windowing::Session { gap_ms: *gap }),
        ("session", _) => Err("session takes (ts, gap) with a gap above zero, e.g. session(ts, INTERVAL '10 minutes')".to_string()),
        ("tumble", [size]) if *size > 0 => aligned(WindowSpec::Tumble { size_ms: *size }),
        ("tumble", _) => Err("tumble takes (ts, size) with a size above zero, e.g. tumble(ts, INTERVAL '5 minutes')".to_string()),
        ("hop", [slide, size]) if *slide > 0 && *size > 0 && size % slide == 0 => {
            aligned(WindowSpec::Hop { slide_ms: *slide, size_ms: *size })
        }
        ("hop", _) => Err("hop takes (ts, slide, size) with size a whole multiple of slide, e.g. hop(ts, INTERVAL '5 minutes', INTERVAL '1 hour')".to_string()),
        ("cumulate", [step, max]) if *step > 0 && *max > 0 && max % step == 0 => {
            aligned(WindowSpec::Cumulate { step_ms: *step, max_size_ms: *max })
        }
        ("cumulate", _) => Err("cumulate takes (ts, step, max_size) with max_size a whole multiple of step, e.g. cumulate(ts, INTERVAL '1 hour', INTERVAL '1 day')".to_string()),
        (other, _) => Err(format!("unknown window function {other}; use tumble, hop, session or cumulate")),
    }
}

/// `INTERVAL '15 minutes'`, `INTERVAL '5' MINUTE` or `'15 minutes'` in milliseconds.
fn interval_ms(expr: &Expr) -> Result<i64, String> {
    let (text, unit) = match expr {
        Expr::Interval(interval) => (
            literal_text(&interval.value),
            interval.leading_field.as_ref().map(|f| f.to_string()),
        ),
        other => (literal_text(other), None),
    };
    let Some(text) = text else {
        return Err(format!("`{expr}` is not a duration; write INTERVAL '5 minutes'"));
    };
    let text = match unit {
        Some(unit) => format!("{text} {}", unit.to_lowercase()),
        None => text,
    };
    parse_duration_ms(&text).map_err(|e| format!("window size: {e}"))
}

fn literal_text(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            _ => None,
        },
        _ => None,
    }
}
