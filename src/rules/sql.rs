//! The SQL side of a rule, before DataFusion sees it: parse the one statement, enforce the
//! read-only sandbox (a single SELECT over one stream table; no DDL, DML, COPY, EXPLAIN or
//! table functions), recognise the window function in GROUP BY (`tumble(ts, INTERVAL …)`),
//! and rewrite it to group by the `window_start`/`window_end` columns the engine supplies.
//! Key columns missing from the SELECT list are appended (hidden) so alerts can be keyed.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::Path;

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, Ident, ObjectName, ObjectNamePart, Query, SelectItem, SetExpr, Spanned, Statement, TableFactor,
    Visit, Visitor, visit_relations,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use super::problem::Problem;
use super::window_calls::{parse_window, window_call};
use crate::schema::{DEVICE_ID, DEVICES, DISTRICT, ROW_INDEX, TABLE_NAME, WINDOW_END, WINDOW_START};
#[cfg(test)]
use crate::window::WindowSpec;
use crate::window::Windowing;

#[derive(Debug, Clone)]
pub(crate) struct AnalyzedSql {
    /// The rewritten statement DataFusion plans.
    pub statement: Statement,
    /// The one table the rule reads.
    pub table: String,
    pub window: Option<Windowing>,
    /// Plain column names in GROUP BY besides the window (the default alert key).
    pub group_columns: Vec<String>,
    /// Columns the engine appended to the SELECT list (not shown in warning values).
    pub hidden_columns: Vec<String>,
    /// Position of the first SQL token, for problems without a better position.
    pub start: (u64, u64),
}

/// Checks and rewrites a rule's SQL. `key` is the header's key override, if any.
pub(crate) fn analyze(path: &Path, text: &str, key: Option<&[String]>) -> Result<AnalyzedSql, Vec<Problem>> {
    let start = first_token_position(text);
    let err = |line: u64, col: u64, message: String| vec![Problem::error(path, line, col, message)];
    let statements = DFParser::parse_sql_with_dialect(text, &GenericDialect {}).map_err(|e| {
        let message = e.strip_backtrace();
        let at_end = message.contains("found: EOF").then(|| end_position(text));
        let (line, col) = parser_error_position(&message).or(at_end).unwrap_or(start);
        err(line, col, format!("SQL syntax error: {}", strip_position(&message)))
    })?;
    let mut statements = statements.into_iter();
    let Some(statement) = statements.next() else {
        return Err(err(start.0, start.1, "the rule has no SELECT statement".to_string()));
    };
    if statements.next().is_some() {
        return Err(err(
            start.0,
            start.1,
            "a rule holds exactly one SELECT statement".to_string(),
        ));
    }
    let mut query = match statement {
        DFStatement::Statement(boxed) => match *boxed {
            Statement::Query(query) => query,
            other => {
                let (line, col) = span_start(&other).unwrap_or(start);
                return Err(err(
                    line,
                    col,
                    format!(
                        "rules are read-only SELECT queries; {} is not allowed",
                        statement_kind(&other)
                    ),
                ));
            }
        },
        DFStatement::CreateExternalTable(_) => {
            return Err(err(
                start.0,
                start.1,
                "rules are read-only SELECT queries; DDL (CREATE EXTERNAL TABLE) is not allowed".to_string(),
            ));
        }
        DFStatement::CopyTo(_) => {
            return Err(err(
                start.0,
                start.1,
                "rules are read-only SELECT queries; COPY is not allowed".to_string(),
            ));
        }
        DFStatement::Explain(_) => {
            return Err(err(
                start.0,
                start.1,
                "rules are read-only SELECT queries; EXPLAIN is not allowed".to_string(),
            ));
        }
        DFStatement::Reset(_) => {
            return Err(err(
                start.0,
                start.1,
                "rules are read-only SELECT queries; this kind of statement is not allowed".to_string(),
            ));
        }
    };
    let table = single_table(path, &query, start)?;
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(err(
            start.0,
            start.1,
            "a rule's query must be one SELECT (no UNION, VALUES or set operations)".to_string(),
        ));
    };

    let mut window = None;
    let mut group_columns = Vec::new();
    let mut problems = Vec::new();
    if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
        let mut rewritten = Vec::with_capacity(exprs.len() + 1);
        for expr in exprs.drain(..) {
            match window_call(&expr) {
                Some(name) => {
                    let (line, col) = expr_start(&expr).unwrap_or(start);
                    if window.is_some() {
                        problems.push(Problem::error(
                            path,
                            line,
                            col,
                            "only one window function may appear in GROUP BY",
                        ));
                        continue;
                    }
                    match parse_window(&name, &expr) {
                        Ok(spec) => window = Some(spec),
                        Err(message) => problems.push(Problem::error(path, line, col, message)),
                    }
                    rewritten.push(Expr::Identifier(Ident::new(WINDOW_START)));
                    rewritten.push(Expr::Identifier(Ident::new(WINDOW_END)));
                }
                None => {
                    if let Some(name) = column_name(&expr) {
                        group_columns.push(name);
                    }
                    rewritten.push(expr);
                }
            }
        }
        *exprs = rewritten;
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    // Output names as the SELECT list gives them.
    let mut output_names = BTreeSet::new();
    let mut wildcard = false;
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(expr) => {
                if let Some(name) = column_name(expr) {
                    output_names.insert(name);
                }
            }
            SelectItem::ExprWithAlias { alias, .. } => {
                output_names.insert(alias.value.to_lowercase());
            }
            _ => wildcard = true,
        }
    }
    // A `devices` rule judges a snapshot, keyed like a window rule; by default per device.
    let snapshot = table == DEVICES;
    if snapshot && group_columns.is_empty() {
        group_columns = vec![TABLE_NAME.to_string(), DEVICE_ID.to_string()];
    }
    let mut hidden_columns = Vec::new();
    let mut wanted: Vec<String> = match (window.is_some() || snapshot, key) {
        (true, Some(k)) => k.to_vec(),
        (true, None) => group_columns.clone(),
        (false, _) => vec![ROW_INDEX.to_string()],
    };
    // A session's result rows are matched to their session by its GROUP BY columns.
    if matches!(window, Some(Windowing::Session { .. })) {
        for column in &group_columns {
            if !wanted.contains(column) {
                wanted.push(column.clone());
            }
        }
    }
    for column in wanted {
        if !wildcard && !output_names.contains(&column) {
            select
                .projection
                .push(SelectItem::UnnamedExpr(Expr::Identifier(Ident::new(&column))));
            hidden_columns.push(column);
        }
    }
    Ok(AnalyzedSql {
        statement: Statement::Query(query),
        table,
        window,
        group_columns,
        hidden_columns,
        start,
    })
}

/// Warnings about a rule that plans but may misbehave in a stream.
pub(crate) fn lint(path: &Path, analyzed: &AnalyzedSql, key: Option<&[String]>) -> Vec<Problem> {
    let keys: Vec<&str> = match key {
        Some(k) => k.iter().map(String::as_str).collect(),
        None => analyzed.group_columns.iter().map(String::as_str).collect(),
    };
    if analyzed.window.is_some() && !keys.iter().any(|k| *k == DEVICE_ID || *k == DISTRICT) {
        let (line, col) = analyzed.start;
        return vec![Problem::warning(
            path,
            line,
            col,
            "this window rule is not grouped by device_id or district: one alert covers the whole table; \
             add them to GROUP BY if each device or district should be alerted on its own",
        )];
    }
    Vec::new()
}

/// The table names the query reads (CTE names excluded); exactly one is required.
fn single_table(path: &Path, query: &Query, start: (u64, u64)) -> Result<String, Vec<Problem>> {
    let ctes: BTreeSet<String> = query
        .with
        .as_ref()
        .map(|w| w.cte_tables.iter().map(|c| c.alias.name.value.to_lowercase()).collect())
        .unwrap_or_default();
    let mut forbidden = TableFunctionFinder::default();
    let _ = query.visit(&mut forbidden);
    if let Some((name, line, col)) = forbidden.found {
        return Err(vec![Problem::error(
            path,
            line,
            col,
            format!(
                "table function `{name}` is not allowed in rules: rules read only the stream tables, never files, URLs or generated tables"
            ),
        )]);
    }
    let mut tables = BTreeSet::new();
    let _ = visit_relations(query, |name: &ObjectName| {
        if let Some(last) = last_part(name)
            && !ctes.contains(&last)
        {
            tables.insert(last);
        }
        ControlFlow::<()>::Continue(())
    });
    match tables.len() {
        1 => Ok(tables.into_iter().next().unwrap_or_default()),
        0 => Err(vec![Problem::error(
            path,
            start.0,
            start.1,
            "a rule reads one table: add FROM sensor, traffic, heating or water",
        )]),
        _ => Err(vec![Problem::error(
            path,
            start.0,
            start.1,
            format!(
                "a rule reads exactly one table; this one reads {}",
                tables.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )]),
    }
}

#[derive(Default)]
struct TableFunctionFinder {
    found: Option<(String, u64, u64)>,
}

impl Visitor for TableFunctionFinder {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let name = match factor {
            TableFactor::Table {
                name, args: Some(_), ..
            } => Some(name.to_string()),
            TableFactor::TableFunction { expr, .. } => Some(expr.to_string()),
            TableFactor::Function { name, .. } => Some(name.to_string()),
            _ => None,
        };
        if let Some(name) = name {
            let span = factor.span();
            self.found = Some((name, span.start.line, span.start.column));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

fn last_part(name: &ObjectName) -> Option<String> {
    name.0.last().and_then(|part| match part {
        ObjectNamePart::Identifier(ident) => Some(ident.value.to_lowercase()),
        _ => None,
    })
}

/// The output name of a plain column reference, lower-cased.
pub(super) fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.to_lowercase()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.to_lowercase()),
        _ => None,
    }
}

fn statement_kind(statement: &Statement) -> &'static str {
    match statement {
        Statement::Insert { .. } | Statement::Update { .. } | Statement::Delete { .. } | Statement::Merge { .. } => {
            "DML (INSERT, UPDATE, DELETE, MERGE)"
        }
        Statement::Copy { .. } | Statement::CopyIntoSnowflake { .. } => "COPY",
        Statement::Explain { .. } | Statement::ExplainTable { .. } => "EXPLAIN",
        Statement::CreateTable { .. }
        | Statement::CreateView { .. }
        | Statement::CreateIndex { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction { .. }
        | Statement::AlterTable { .. }
        | Statement::Drop { .. }
        | Statement::Truncate { .. } => "DDL (CREATE, ALTER, DROP, TRUNCATE)",
        _ => "this kind of statement",
    }
}

fn span_start(statement: &Statement) -> Option<(u64, u64)> {
    let span = statement.span();
    (span.start.line > 0).then_some((span.start.line, span.start.column))
}

fn expr_start(expr: &Expr) -> Option<(u64, u64)> {
    let span = expr.span();
    (span.start.line > 0).then_some((span.start.line, span.start.column))
}

/// Line and column of the first character that is not whitespace or a `--` comment.
fn first_token_position(text: &str) -> (u64, u64) {
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        return (index as u64 + 1, (line.len() - trimmed.len()) as u64 + 1);
    }
    (1, 1)
}

/// sqlparser reports positions as "… at Line: 3, Column: 5".
fn parser_error_position(message: &str) -> Option<(u64, u64)> {
    let rest = &message[message.rfind("Line: ")? + 6..];
    let (line, rest) = rest.split_once(',')?;
    let column = rest.trim().strip_prefix("Column: ")?;
    let column: String = column.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

/// Line and column just after the last character of the text.
fn end_position(text: &str) -> (u64, u64) {
    let trimmed = text.trim_end();
    let line = trimmed.lines().count().max(1) as u64;
    let col = trimmed.lines().last().map(|l| l.chars().count() + 1).unwrap_or(1) as u64;
    (line, col)
}

fn strip_position(message: &str) -> String {
    let message = message.strip_prefix("SQL error: ").unwrap_or(message);
    let message = match message.strip_prefix("ParserError(\"") {
        Some(inner) => inner.strip_suffix("\")").unwrap_or(inner),
        None => message,
    };
    let message = message.strip_prefix("sql parser error: ").unwrap_or(message);
    match message.rfind(" at Line: ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyze_text(text: &str) -> Result<AnalyzedSql, Vec<String>> {
        analyze(Path::new("r.sql"), text, None).map_err(|ps| ps.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn tumble_is_recognised_and_rewritten_to_window_columns() {
        let sql = "-- level: red\nSELECT district, avg(value) AS v FROM sensor\nGROUP BY tumble(ts, INTERVAL '15 minutes'), district, device_id";
        let a = analyze_text(sql).expect("valid");
        assert_eq!(
            a.window,
            Some(Windowing::Aligned(WindowSpec::Tumble { size_ms: 900_000 }))
        );
        assert_eq!(a.table, "sensor");
        assert_eq!(a.group_columns, ["district", "device_id"]);
        assert_eq!(a.hidden_columns, ["device_id"]);
        let rewritten = a.statement.to_string();
        assert!(
            rewritten.contains("GROUP BY window_start, window_end, district, device_id"),
            "{rewritten}"
        );
        assert!(
            rewritten.starts_with("SELECT district, avg(value) AS v, device_id FROM sensor"),
            "{rewritten}"
        );
        assert_eq!(a.start, (2, 1));
    }

    #[test]
    fn interval_with_a_unit_keyword_is_understood() {
        let a = analyze_text("SELECT count(*) FROM water GROUP BY tumble(ts, INTERVAL '5' MINUTE), device_id")
            .expect("valid");
        assert_eq!(
            a.window,
            Some(Windowing::Aligned(WindowSpec::Tumble { size_ms: 300_000 }))
        );
    }

    #[test]
    fn row_rules_get_the_hidden_row_index() {
        let a = analyze_text("SELECT device_id, value FROM sensor WHERE value > 5").expect("valid");
        assert_eq!((a.window, a.hidden_columns), (None, vec![ROW_INDEX.to_string()]));
    }

    #[test]
    fn forbidden_statements_are_rejected_with_their_kind() {
        let cases = [
            ("INSERT INTO sensor VALUES (1)", "DML"),
            ("DELETE FROM sensor", "DML"),
            ("UPDATE sensor SET value = 1", "DML"),
            ("CREATE TABLE t (a INT)", "DDL"),
            ("DROP TABLE sensor", "DDL"),
            ("COPY sensor TO 'out.csv'", "COPY"),
            ("EXPLAIN SELECT * FROM sensor", "EXPLAIN"),
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
        ];
        for (sql, kind) in cases {
            let problems = analyze_text(sql).unwrap_err();
            assert!(
                problems[0].contains("read-only SELECT") && problems[0].contains(kind),
                "{sql}: {problems:?}"
            );
        }
        let problems = analyze_text("SELECT * FROM read_csv('/etc/passwd')").unwrap_err();
        assert!(
            problems[0].contains("table function `read_csv` is not allowed"),
            "{problems:?}"
        );
        let problems = analyze_text("SELECT 1; SELECT 2").unwrap_err();
        assert!(problems[0].contains("exactly one SELECT"), "{problems:?}");
    }

    #[test]
    fn syntax_errors_carry_the_parser_position() {
        let problems = analyze_text("-- level: red\nSELECT device_id\nFROM sensor WHERE value >").unwrap_err();
        assert!(
            problems[0].starts_with("r.sql:3:26: SQL syntax error: Expected: an expression, found: EOF"),
            "{problems:?}"
        );
        assert!(problems[0].contains("SQL syntax error"), "{problems:?}");
    }

    #[test]
    fn rules_must_read_exactly_one_table() {
        assert!(analyze_text("SELECT 1").unwrap_err()[0].contains("add FROM"));
        let two = analyze_text("SELECT * FROM sensor JOIN water ON sensor.device_id = water.device_id").unwrap_err();
        assert!(two[0].contains("reads sensor, water"), "{two:?}");
        let with_cte = "WITH hot AS (SELECT * FROM heating) SELECT device_id FROM hot";
        assert_eq!(analyze_text(with_cte).expect("a CTE is not a table").table, "heating");
    }

    #[test]
    fn hop_and_cumulate_are_recognised_and_window_ends_are_evenly_spaced() {
        let hop = analyze_text("SELECT device_id, avg(value) FROM sensor GROUP BY hop(ts, INTERVAL '5 minutes', INTERVAL '10 minutes'), device_id")
            .expect("valid")
            .window
            .expect("a window");
        let Windowing::Aligned(hop) = hop else {
            panic!("hop is aligned")
        };
        assert_eq!(
            hop,
            WindowSpec::Hop {
                slide_ms: 300_000,
                size_ms: 600_000
            }
        );
        let session = analyze_text(
            "SELECT device_id, count(*) FROM sensor GROUP BY session(ts, INTERVAL '2' MINUTES), device_id",
        )
        .expect("valid");
        assert_eq!(session.window, Some(Windowing::Session { gap_ms: 120_000 }));
        assert_eq!(
            hop.ends_of(420_000).collect::<Vec<_>>(),
            vec![600_000, 900_000],
            "7 min is in [0, 10) and [5, 15)"
        );
        assert_eq!(hop.window_ending_at(900_000), (300_000, 900_000));
        let cumulate = WindowSpec::Cumulate {
            step_ms: 2,
            max_size_ms: 8,
        };
        assert_eq!(cumulate.ends_of(3).collect::<Vec<_>>(), vec![4, 6, 8]);
        assert_eq!(cumulate.window_ending_at(6), (0, 6));
        assert_eq!(cumulate.window_ending_at(10), (8, 10));
        let tumble = WindowSpec::Tumble { size_ms: 5 };
        assert_eq!(tumble.ends_of(7).collect::<Vec<_>>(), vec![10]);
        assert!(
            analyze_text("SELECT 1 FROM sensor GROUP BY hop(ts, INTERVAL '7 minutes', INTERVAL '10 minutes')").is_err()
        );
    }

    #[test]
    fn unsupported_window_arguments_are_explained() {
        let problems =
            analyze_text("SELECT 1 FROM sensor GROUP BY tumble(window_end, INTERVAL '1 minute')").unwrap_err();
        assert!(
            problems[0].contains("first argument must be the event-time column ts"),
            "{problems:?}"
        );
        let problems = analyze_text("SELECT 1 FROM sensor GROUP BY tumble(ts, INTERVAL '0 minutes')").unwrap_err();
        assert!(problems[0].contains("size above zero"), "{problems:?}");
    }

    #[test]
    fn window_rules_without_device_or_district_keys_get_a_warning() {
        let a = analyze_text("SELECT avg(value) FROM sensor GROUP BY tumble(ts, INTERVAL '1 minute')").expect("valid");
        let warnings = lint(Path::new("r.sql"), &a, None);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .to_string()
                .contains("warning: this window rule is not grouped")
        );
    }
}
