//! Turning what went wrong while planning into `path:line:col: message` problems: a
//! DataFusion error positioned by its diagnostic span, an unknown table pointed at where the
//! SQL names it, with a near-miss suggestion (`closest`, by edit distance).

use std::path::Path;

use datafusion::error::DataFusionError;

use crate::rules::problem::Problem;
use crate::schema::{Catalog, DEVICES};

/// A DataFusion error as a problem, positioned by its diagnostic span when it has one.
pub(super) fn df_problem(path: &Path, error: &DataFusionError, fallback: (u64, u64)) -> Problem {
    let diagnostic = error.diagnostic();
    let (line, col) = diagnostic
        .and_then(|d| d.span)
        .map(|s| (s.start.line, s.start.column))
        .filter(|(line, _)| *line > 0)
        .unwrap_or(fallback);
    let mut message = error.strip_backtrace();
    for prefix in ["Error during planning: ", "Schema error: ", "SQL error: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            message = rest.to_string();
        }
    }
    if let Some(d) = diagnostic {
        for help in &d.helps {
            message.push_str(&format!("; help: {}", help.message));
        }
    }
    // One problem, one line: editors and CI read `path:line:col: message` line by line.
    let message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Problem::error(path, line, col, message)
}

/// A rule reading a table the catalog lacks: pointed at where the SQL names it (else at
/// `fallback`), with the near miss when there is one and the tables there are.
pub(super) fn unknown_table(path: &Path, text: &str, table: &str, catalog: &Catalog, fallback: (u64, u64)) -> Problem {
    let (line, col) = find_word(text, table).unwrap_or(fallback);
    let mut names: Vec<&str> = catalog.tables().iter().map(|t| t.name.as_str()).collect();
    names.push(DEVICES);
    let hint = closest(table, &names)
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    Problem::error(
        path,
        line,
        col,
        format!("unknown table `{table}`{hint} (tables: {})", names.join(", ")),
    )
}

/// 1-based position of the first whole-word, case-insensitive occurrence of `word` in SQL.
fn find_word(text: &str, word: &str) -> Option<(u64, u64)> {
    let word = word.to_lowercase();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("--") {
            continue;
        }
        let lower = line.to_lowercase();
        let mut from = 0;
        while let Some(found) = lower[from..].find(&word) {
            let at = from + found;
            let before = lower[..at].chars().next_back();
            let after = lower[at + word.len()..].chars().next();
            let boundary = |c: Option<char>| !c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            if boundary(before) && boundary(after) {
                return Some((index as u64 + 1, at as u64 + 1));
            }
            from = at + word.len();
        }
    }
    None
}

/// The candidate within edit distance 2 of `name`, if any.
fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push((previous[j] + cost).min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_suggests_near_misses_only() {
        assert_eq!(closest("sensr", &["sensor", "water"]), Some("sensor"));
        assert_eq!(closest("elevator", &["sensor", "water"]), None);
    }

    #[test]
    fn find_word_skips_comments_and_partial_words() {
        let text = "-- sensor rule\nSELECT sensors, x\nFROM sensor";
        assert_eq!(find_word(text, "sensor"), Some((3, 6)));
    }
}
