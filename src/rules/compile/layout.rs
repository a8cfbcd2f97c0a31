//! Where the parts of an alert are in a rule's planned output: the alert key, the `level`
//! and the reported values (`OutputLayout`), and for session rules the GROUP BY columns that
//! partition the sessions (`SessionKey`). Key columns are resolved by one function,
//! `resolve_key`, whichever schema they are looked up in.

use std::path::Path;

use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::RuleKind;
use crate::rules::loader::RuleFile;
use crate::rules::problem::Problem;
use crate::rules::sql::AnalyzedSql;
use crate::schema::{DEVICE_ID, DISTRICT, ROW_INDEX, TableDef, WINDOW_END, WINDOW_START};

/// Where the parts of an alert are in the rule's output (or input, for row-rule keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLayout {
    /// Alert key columns: output columns for window rules, input columns for row rules.
    pub key: Vec<(String, usize)>,
    /// Output columns reported as `values`.
    pub values: Vec<(String, usize)>,
    /// The output column `level`, when the rule grades per row.
    pub level: Option<usize>,
    /// The output column holding the input row index (row rules).
    pub row_index: Option<usize>,
}

/// Sorts the plan's `output` columns into alert key, level and values. Window, session and
/// `devices` rules key their alerts by output columns (the header's `key`, else the GROUP
/// BY columns); row rules by columns of their `table` (the header's `key`, else district,
/// device and, when the table has one, kind).
pub(super) fn output_layout(
    rule: &RuleFile,
    analyzed: &AnalyzedSql,
    kind: RuleKind,
    table: Option<&TableDef>,
    output: &SchemaRef,
) -> Result<OutputLayout, Vec<Problem>> {
    let path = rule.path.as_path();
    let header = &rule.header;
    // Key problems point at the `-- key:` header when there is one, else at the query.
    let key_at = rule
        .text
        .lines()
        .position(|l| l.trim_start().starts_with("-- key:"))
        .map(|i| (i as u64 + 1, 8))
        .unwrap_or(analyzed.start);
    let index = |name: &str| output.index_of(name).ok();

    let key = match kind {
        RuleKind::Window(_) | RuleKind::Session { .. } | RuleKind::Devices => {
            let names = header.key.clone().unwrap_or_else(|| analyzed.group_columns.clone());
            resolve_key(names, index, path, key_at, |name| {
                format!("key column `{name}` is not in the rule's output; select it or group by it")
            })?
        }
        RuleKind::Row => {
            let Some(table) = table else {
                return Err(vec![Problem::error(
                    path,
                    1,
                    1,
                    "internal: a row rule without its table",
                )]);
            };
            let names = header.key.clone().unwrap_or_else(|| {
                let mut names = vec![DISTRICT.to_string(), DEVICE_ID.to_string()];
                if table.column_index("kind").is_some() {
                    names.push("kind".to_string());
                }
                names
            });
            resolve_key(
                names,
                |name| table.column_index(name),
                path,
                key_at,
                |name| format!("key column `{name}` is not a column of table `{}`", table.name),
            )?
        }
    };
    let level = index("level");
    if let Some(i) = level
        && !matches!(
            output.field(i).data_type(),
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        )
    {
        return Err(vec![Problem::error(
            path,
            analyzed.start.0,
            analyzed.start.1,
            "the `level` column must be text: 'blue', 'yellow', 'orange' or 'red'",
        )]);
    }
    let row_index = index(ROW_INDEX);
    let skip = |name: &str| {
        name == "level"
            || name == ROW_INDEX
            || name == WINDOW_START
            || name == WINDOW_END
            || analyzed.hidden_columns.iter().any(|h| h == name)
            || key.iter().any(|(k, _)| k == name)
    };
    let values = output
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !skip(f.name()))
        .map(|(i, f)| (f.name().clone(), i))
        .collect();
    if kind == RuleKind::Row && row_index.is_none() {
        return Err(vec![Problem::error(
            path,
            analyzed.start.0,
            analyzed.start.1,
            "internal: the row index was not selected",
        )]);
    }
    Ok(OutputLayout {
        key,
        values,
        level,
        row_index,
    })
}

/// How a session rule keeps sessions apart: by its GROUP BY columns (Flink's PARTITION BY).
/// Its alert key may add `window_start`/`window_end` so each session is its own alert.
#[derive(Debug, Clone, Default)]
pub struct SessionKey {
    /// The GROUP BY columns' positions in the table: rows are routed to sessions by these.
    pub input: Vec<(String, usize)>,
    /// Their positions in the rule's output: result rows are matched to sessions by these.
    pub output: Vec<(String, usize)>,
    /// Their positions among the alert key's fields: an alert belongs to one partition.
    pub in_alert_key: Vec<usize>,
}

impl SessionKey {
    /// Whether the alert key is the partition itself (one alert per GROUP BY value).
    pub fn is_alert_key(&self, layout: &OutputLayout) -> bool {
        layout.key.len() == self.input.len() && self.in_alert_key.iter().enumerate().all(|(i, k)| i == *k)
    }
}

/// A session rule's partition: its GROUP BY columns, which must be plain table columns (the
/// sessions are tracked per value before aggregation) and part of the alert key (each alert
/// belongs to one partition's sessions).
pub(super) fn session_key(
    rule: &RuleFile,
    analyzed: &AnalyzedSql,
    table: &TableDef,
    layout: &OutputLayout,
    output: &SchemaRef,
    start: (u64, u64),
) -> Result<SessionKey, Vec<Problem>> {
    let names = &analyzed.group_columns;
    let input = resolve_key(
        names.iter().cloned(),
        |name| table.column_index(name),
        &rule.path,
        start,
        |name| {
            format!(
                "sessions are kept per GROUP BY column, so `{name}` must be a column of table `{}`",
                table.name
            )
        },
    )?;
    let output = resolve_key(
        names.iter().cloned(),
        |name| output.index_of(name).ok(),
        &rule.path,
        start,
        |name| format!("internal: GROUP BY column `{name}` is not in the rule's output"),
    )?;
    let in_alert_key = resolve_key(
        names.iter().cloned(),
        |name| layout.key.iter().position(|(k, _)| k == name),
        &rule.path,
        start,
        |name| {
            format!(
                "a session rule's key must include its GROUP BY column `{name}` (add `window_start, window_end` to make each session its own alert)"
            )
        },
    )?
    .into_iter()
    .map(|(_, i)| i)
    .collect();
    Ok(SessionKey {
        input,
        output,
        in_alert_key,
    })
}

/// Each key column name with its position (`position`); the first name without one is a
/// problem at `at`, worded by `missing`.
fn resolve_key(
    names: impl IntoIterator<Item = String>,
    position: impl Fn(&str) -> Option<usize>,
    path: &Path,
    at: (u64, u64),
    missing: impl Fn(&str) -> String,
) -> Result<Vec<(String, usize)>, Vec<Problem>> {
    names
        .into_iter()
        .map(|name| match position(&name) {
            Some(i) => Ok((name, i)),
            None => Err(vec![Problem::error(path, at.0, at.1, missing(&name))]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_key_gives_positions_or_names_the_first_missing_column() {
        let columns = ["district", "device_id", "value"];
        let position = |name: &str| columns.iter().position(|c| *c == name);
        let names = ["device_id", "district"].map(String::from);
        let key = resolve_key(names, position, Path::new("rule.sql"), (2, 8), |n| format!("no `{n}`")).unwrap();
        assert_eq!(key, [("device_id".to_string(), 1), ("district".to_string(), 0)]);

        let names = ["kind", "level"].map(String::from);
        let problems =
            resolve_key(names, position, Path::new("rule.sql"), (2, 8), |n| format!("no `{n}`")).unwrap_err();
        assert_eq!(problems, [Problem::error("rule.sql", 2, 8, "no `kind`")]);
    }
}
