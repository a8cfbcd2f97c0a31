//! Window calls in a rule's GROUP BY — `tumble(ts, size)`, `hop(ts, slide, size)`,
//! `cumulate(ts, step, max_size)`, `session(ts, gap)` — recognised in the SQL and parsed
//! into the window kinds the engine runs (`window::Windowing`). The geometry itself (which
//! windows hold a row) belongs to the window module.

use datafusion::sql::sqlparser::ast::{Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectNamePart, Value};

use super::sql::column_name;
use crate::time::parse_duration_ms;
use crate::window::{WindowSpec, Windowing};

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
