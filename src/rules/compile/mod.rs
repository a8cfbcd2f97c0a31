//! Planning a rule once with DataFusion: a sandboxed session per rule (one partition, no
//! dynamic filters, a memory limit), the rule's table registered as a channel-fed
//! `StreamingTable`, the rewritten SQL planned to a physical plan, and the output columns
//! sorted into alert key, level and values. Planning never happens on the evaluation path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::TreeNode;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};

use super::feed::Feed;
use super::leaf::{narrow_leaf, without_leaf_filter};
use super::loader::RuleFile;
use super::problem::Problem;
use super::sql::{AnalyzedSql, analyze, lint};
use super::windowing::{WindowSpec, Windowing};
use crate::alert::level::Level;
use crate::alert::lifecycle::{FireAfter, Policy};
use crate::alert::warning::RuleInfo;
use crate::config::EngineConfig;
use crate::schema::{
    Catalog, DEVICE_ID, DEVICES, DISTRICT, ROW_INDEX, TableDef, UTC, WINDOW_END, WINDOW_START, devices_schema,
    timestamp_type,
};
use crate::time::EpochMs;
use crate::time::parse_duration_ms;

/// Row rules judge each row; window rules judge each closed window; session rules judge
/// each closed session of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Row,
    Window(WindowSpec),
    Session {
        gap_ms: i64,
    },
    /// A snapshot of the `devices` table, judged once per minute of event time.
    Devices,
}

impl RuleKind {
    /// The kind's name as the live view shows it.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Row => "row",
            RuleKind::Window(WindowSpec::Tumble { .. }) => "tumble",
            RuleKind::Window(WindowSpec::Hop { .. }) => "hop",
            RuleKind::Window(WindowSpec::Cumulate { .. }) => "cumulate",
            RuleKind::Session { .. } => "session",
            RuleKind::Devices => "devices",
        }
    }
}

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

/// A rule planned and ready to evaluate.
pub struct CompiledRule {
    pub id: String,
    pub path: PathBuf,
    pub info: RuleInfo,
    /// Position of the rule's table in the catalog.
    pub table: usize,
    /// The tables whose batches the rule reads: its own, or for a `devices` rule those
    /// its WHERE clause can pass (`watched`).
    pub watched: Vec<usize>,
    pub kind: RuleKind,
    /// The header's level, used when the output has no `level` column.
    pub level: Level,
    pub policy: Policy,
    pub lateness_ms: i64,
    /// The schema of the batches the rule's plan reads: the columns it needs of the table
    /// and of the engine's (`window_start`, …), in table order then engine order.
    pub feed_schema: SchemaRef,
    pub layout: OutputLayout,
    /// Session rules: the key columns in the input, which partition the sessions.
    pub session_key: Vec<(String, usize)>,
    /// FNV-1a of the rule's text, to tell versions apart.
    pub version: String,
    plan: Arc<dyn ExecutionPlan>,
    feed: Arc<Feed>,
    task_ctx: Arc<TaskContext>,
    /// The rule's WHERE clause over the table's own columns, when the plan filters right
    /// above its leaf and the clause is deterministic: the worker drops failing rows before
    /// they reach the plan, whose filter is then dropped.
    prefilter: Option<Arc<dyn PhysicalExpr>>,
    /// Per column of `feed_schema`: its position among the table's columns followed by the
    /// engine's.
    input_columns: Vec<usize>,
    /// How many of those positions are the table's.
    table_width: usize,
}

/// The values of the columns the engine adds to a table's rows for a rule.
#[derive(Debug, Clone, Copy)]
pub enum EngineColumns<'a> {
    /// Window rules: the window (or session) the rows belong to.
    Window { start: EpochMs, end: EpochMs },
    /// Row rules: each row's position in its batch.
    RowIndex(&'a ArrayRef),
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl CompiledRule {
    /// Starts one evaluation over `input`; the returned stream yields the rule's result rows.
    pub fn execute(&self, input: SendableRecordBatchStream) -> Result<SendableRecordBatchStream, DataFusionError> {
        self.feed.bind(input);
        let output = self.plan.execute(0, Arc::clone(&self.task_ctx));
        if self.feed.is_bound() {
            self.feed.unbind();
            return Err(DataFusionError::Internal(format!(
                "rule {} did not bind its input during execute",
                self.id
            )));
        }
        output
    }

    /// Which rows of a table batch pass the rule's WHERE clause (a null counts as failing);
    /// `None` when every row may reach the plan (no clause the worker can evaluate ahead).
    pub fn passing(&self, batch: &RecordBatch) -> Result<Option<BooleanArray>, DataFusionError> {
        let Some(predicate) = &self.prefilter else {
            return Ok(None);
        };
        let result = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
        let Some(mask) = result.as_boolean_opt() else {
            return Err(DataFusionError::Internal(format!(
                "rule {}: the WHERE clause gave {} instead of booleans",
                self.id,
                result.data_type()
            )));
        };
        Ok(Some(match mask.nulls() {
            Some(nulls) => BooleanArray::new(mask.values() & nulls.inner(), None),
            None => mask.clone(),
        }))
    }

    /// The batch the plan reads for some rows of a table batch (`rows`: their positions;
    /// `None`: all): only the columns the plan needs are taken, then the engine's appended.
    pub fn input_of(
        &self,
        batch: &RecordBatch,
        rows: Option<&UInt32Array>,
        engine: EngineColumns<'_>,
    ) -> Result<RecordBatch, DataFusionError> {
        let len = rows.map_or(batch.num_rows(), |r| r.len());
        let mut columns = Vec::with_capacity(self.input_columns.len());
        for &i in &self.input_columns {
            let column: ArrayRef = match (i.checked_sub(self.table_width), engine) {
                (None, _) => match rows {
                    Some(rows) => take(batch.column(i), rows, None)?,
                    None => Arc::clone(batch.column(i)),
                },
                (Some(0), EngineColumns::Window { start, .. }) => {
                    Arc::new(TimestampMillisecondArray::from_value(start, len).with_timezone(UTC))
                }
                (Some(1), EngineColumns::Window { end, .. }) => {
                    Arc::new(TimestampMillisecondArray::from_value(end, len).with_timezone(UTC))
                }
                (Some(0), EngineColumns::RowIndex(index)) => Arc::clone(index),
                (Some(_), _) => {
                    return Err(DataFusionError::Internal(format!(
                        "rule {}: its input has no engine column {i}",
                        self.id
                    )));
                }
            };
            columns.push(column);
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.feed_schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(len)),
        )?)
    }

    /// An input stream over already-built batches.
    pub fn stream_of(&self, batches: Vec<datafusion::arrow::record_batch::RecordBatch>) -> SendableRecordBatchStream {
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.feed_schema),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))
    }
}

/// Plans every rule; returns the ones that compiled and every problem (errors and warnings).
pub async fn compile_all(
    rules: &[RuleFile],
    catalog: &Catalog,
    engine: &EngineConfig,
) -> (Vec<CompiledRule>, Vec<Problem>) {
    let mut compiled = Vec::new();
    let mut problems = Vec::new();
    for rule in rules {
        match compile(rule, catalog, engine).await {
            Ok((c, mut warnings)) => {
                compiled.push(c);
                problems.append(&mut warnings);
            }
            Err(mut errors) => problems.append(&mut errors),
        }
    }
    (compiled, problems)
}

/// Plans one rule. Returns the compiled rule with its warnings, or its errors.
pub async fn compile(
    rule: &RuleFile,
    catalog: &Catalog,
    engine: &EngineConfig,
) -> Result<(CompiledRule, Vec<Problem>), Vec<Problem>> {
    let path = rule.path.as_path();
    let header = &rule.header;
    let analyzed = analyze(path, &rule.text, header.key.as_deref())?;
    let warnings = lint(path, &analyzed, header.key.as_deref());
    let start = analyzed.start;
    let devices = analyzed.table == DEVICES;
    let table_def = catalog.get(&analyzed.table);
    if table_def.is_none() && !devices {
        let (line, col) = find_word(&rule.text, &analyzed.table).unwrap_or(start);
        let mut names: Vec<&str> = catalog.tables().iter().map(|t| t.name.as_str()).collect();
        names.push(DEVICES);
        let hint = closest(&analyzed.table, &names)
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        return Err(vec![Problem::error(
            path,
            line,
            col,
            format!(
                "unknown table `{}`{hint} (tables: {})",
                analyzed.table,
                names.join(", ")
            ),
        )]);
    }
    let table = catalog.index_of(&analyzed.table).unwrap_or_default();
    let kind = match (analyzed.window, devices) {
        (None, true) => RuleKind::Devices,
        (Some(_), true) => {
            return Err(vec![Problem::error(
                path,
                start.0,
                start.1,
                "`devices` is judged as a snapshot each minute: it takes no window function",
            )]);
        }
        (Some(Windowing::Aligned(spec)), false) => RuleKind::Window(spec),
        (Some(Windowing::Session { gap_ms }), false) => RuleKind::Session { gap_ms },
        (None, false) => RuleKind::Row,
    };
    let feed_schema = match table_def {
        Some(def) => feed_schema(def, kind),
        None => devices_schema(),
    };
    let feed = Arc::new(Feed::new(Arc::clone(&feed_schema)));
    let ctx = rule_session(engine).map_err(|e| vec![df_problem(path, &e, start)])?;
    let provider = StreamingTable::try_new(Arc::clone(&feed_schema), vec![Arc::clone(&feed) as _])
        .map_err(|e| vec![df_problem(path, &e, start)])?;
    ctx.register_table(analyzed.table.as_str(), Arc::new(provider))
        .map_err(|e| vec![df_problem(path, &e, start)])?;

    let logical = plan_logical(&ctx, &analyzed)
        .await
        .map_err(|e| vec![df_problem(path, &e, start)])?;
    if kind == RuleKind::Row
        && logical
            .exists(|p| Ok(matches!(p, LogicalPlan::Aggregate(_))))
            .unwrap_or(false)
    {
        return Err(vec![Problem::error(
            path,
            start.0,
            start.1,
            "aggregates need a window: add tumble(ts, INTERVAL '…') to GROUP BY (a rule without a window judges each row)",
        )]);
    }
    let plan = ctx
        .state()
        .create_physical_plan(&logical)
        .await
        .map_err(|e| vec![df_problem(path, &e, start)])?;
    let layout = output_layout(rule, &analyzed, kind, table_def.map(|t| t.as_ref()), &plan.schema())?;
    let policy = policy(rule, kind)?;
    let (plan, prefilter) = match (kind, table_def) {
        (RuleKind::Row | RuleKind::Window(_), Some(def)) => without_leaf_filter(plan, &def.schema),
        _ => (plan, None),
    };
    let table_width = table_def.map_or(feed_schema.fields().len(), |def| def.schema.fields().len());
    // A `devices` snapshot is built whole by the worker; table rows are narrowed.
    let (plan, feed, feed_schema, input_columns) = match kind {
        RuleKind::Devices => {
            let all = (0..feed_schema.fields().len()).collect();
            (plan, feed, feed_schema, all)
        }
        _ => narrow_leaf(plan, feed, feed_schema).map_err(|e| vec![df_problem(path, &e, start)])?,
    };
    let session_key = match (kind, table_def) {
        (RuleKind::Session { .. }, Some(def)) => session_key(rule, def, &layout, start)?,
        _ => Vec::new(),
    };

    let watched = match kind {
        RuleKind::Devices => {
            let names: Vec<String> = catalog.tables().iter().map(|t| t.name.clone()).collect();
            super::watched::watched_tables(&logical, &names)
        }
        _ => vec![table],
    };
    let compiled = CompiledRule {
        id: rule.id.clone(),
        path: rule.path.clone(),
        info: RuleInfo {
            rule: rule.id.clone(),
            table: analyzed.table.clone(),
            description: header.description.clone(),
        },
        table,
        watched,
        kind,
        level: header.level,
        policy,
        lateness_ms: header.lateness_ms.unwrap_or(engine.lateness.0),
        feed_schema,
        layout,
        session_key,
        version: rule.version(),
        plan,
        feed,
        task_ctx: ctx.task_ctx(),
        prefilter,
        input_columns,
        table_width,
    };
    smoke_test(&compiled)
        .await
        .map_err(|e| vec![df_problem(path, &e, start)])?;
    Ok((compiled, warnings))
}

/// One session per rule: a single partition (rules scale by running in parallel), spans
/// for error positions, no dynamic filters (the plan is re-executed), and a memory limit.
fn rule_session(engine: &EngineConfig) -> Result<SessionContext, DataFusionError> {
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    let options = config.options_mut();
    options.sql_parser.collect_spans = true;
    options.optimizer.enable_dynamic_filter_pushdown = false;
    options.optimizer.enable_round_robin_repartition = false;
    options.execution.coalesce_batches = false;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(engine.rule_memory_limit_mb.max(1) * 1024 * 1024, 1.0)
        .build_arc()?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    Ok(SessionContext::new_with_state(state))
}

async fn plan_logical(ctx: &SessionContext, analyzed: &AnalyzedSql) -> Result<LogicalPlan, DataFusionError> {
    let statement = datafusion::sql::parser::Statement::Statement(Box::new(analyzed.statement.clone()));
    let plan = ctx.state().statement_to_plan(statement).await?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)?;
    Ok(plan)
}

fn feed_schema(table: &TableDef, kind: RuleKind) -> SchemaRef {
    let mut fields: Vec<Field> = table.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    match kind {
        RuleKind::Window(_) | RuleKind::Session { .. } => {
            fields.push(Field::new(WINDOW_START, timestamp_type(), false));
            fields.push(Field::new(WINDOW_END, timestamp_type(), false));
        }
        RuleKind::Row => fields.push(Field::new(ROW_INDEX, DataType::UInt32, false)),
        RuleKind::Devices => {}
    }
    Arc::new(Schema::new(fields))
}

fn output_layout(
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

    let key: Vec<(String, usize)> = match kind {
        RuleKind::Window(_) | RuleKind::Session { .. } | RuleKind::Devices => {
            let names = header.key.clone().unwrap_or_else(|| analyzed.group_columns.clone());
            let mut key = Vec::new();
            for name in names {
                match index(&name) {
                    Some(i) => key.push((name, i)),
                    None => {
                        return Err(vec![Problem::error(
                            path,
                            key_at.0,
                            key_at.1,
                            format!("key column `{name}` is not in the rule's output; select it or group by it"),
                        )]);
                    }
                }
            }
            key
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
            let mut key = Vec::new();
            for name in names {
                match table.column_index(&name) {
                    Some(i) => key.push((name, i)),
                    None => {
                        return Err(vec![Problem::error(
                            path,
                            key_at.0,
                            key_at.1,
                            format!("key column `{name}` is not a column of table `{}`", table.name),
                        )]);
                    }
                }
            }
            key
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

/// A session rule's key must be plain table columns: sessions are tracked per key value
/// before aggregation.
fn session_key(
    rule: &RuleFile,
    table: &TableDef,
    layout: &OutputLayout,
    start: (u64, u64),
) -> Result<Vec<(String, usize)>, Vec<Problem>> {
    layout
        .key
        .iter()
        .map(|(name, _)| match table.column_index(name) {
            Some(i) => Ok((name.clone(), i)),
            None => Err(vec![Problem::error(
                &rule.path,
                start.0,
                start.1,
                format!(
                    "session windows are kept per key, so key column `{name}` must be a column of table `{}`",
                    table.name
                ),
            )]),
        })
        .collect()
}

fn policy(rule: &RuleFile, kind: RuleKind) -> Result<Policy, Vec<Problem>> {
    let resolve_after = rule.header.resolve;
    let fire_after = match (&rule.header.fire_for, kind) {
        (None, RuleKind::Window(_) | RuleKind::Session { .. } | RuleKind::Devices) => FireAfter::Windows(1),
        (None, RuleKind::Row) => FireAfter::Duration(0),
        (Some(f), RuleKind::Window(_) | RuleKind::Session { .. } | RuleKind::Devices) => match f.text.parse::<u32>() {
            Ok(n) if n >= 1 => FireAfter::Windows(n),
            _ => {
                return Err(vec![Problem::error(
                    &rule.path,
                    f.line,
                    f.col,
                    format!(
                        "`for` of a window rule counts breaching windows: a whole number of at least 1, got `{}`",
                        f.text
                    ),
                )]);
            }
        },
        (Some(f), RuleKind::Row) => match (f.text.as_str(), parse_duration_ms(&f.text)) {
            ("0", _) => FireAfter::Duration(0),
            (_, Ok(ms)) => FireAfter::Duration(ms),
            (_, Err(e)) => {
                return Err(vec![Problem::error(
                    &rule.path,
                    f.line,
                    f.col,
                    format!("`for` of a row rule is a duration: {e}"),
                )]);
            }
        },
    };
    Ok(Policy {
        fire_after,
        resolve_after,
    })
}

/// Runs the plan once over no rows, so a rule that cannot execute fails at load time.
async fn smoke_test(rule: &CompiledRule) -> Result<(), DataFusionError> {
    let stream = rule.execute(rule.stream_of(Vec::new()))?;
    datafusion::physical_plan::common::collect(stream).await.map(|_| ())
}

/// A DataFusion error as a problem, positioned by its diagnostic span when it has one.
fn df_problem(path: &Path, error: &DataFusionError, fallback: (u64, u64)) -> Problem {
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
pub fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
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

    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::Float64Type;
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::physical_plan::filter::FilterExec;

    use crate::rules::loader::parse_rule;

    fn compiled(sql: &str) -> CompiledRule {
        let file = parse_rule(Path::new("rule.sql"), format!("-- level: yellow\n{sql}\n")).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (rule, _) = runtime
            .block_on(compile(&file, &Catalog::builtin(), &EngineConfig::default()))
            .unwrap();
        rule
    }

    /// Four sensor rows: kinds noise, gas_lel, gas_lel, noise; values 1, 2, 3, 4 (the third
    /// row's kind is null).
    fn sensor_rows() -> RecordBatch {
        let def = Arc::clone(Catalog::builtin().get("sensor").unwrap());
        let columns: Vec<ArrayRef> = def
            .schema
            .fields()
            .iter()
            .map(|field| -> ArrayRef {
                match field.name().as_str() {
                    "ts" => Arc::new(TimestampMillisecondArray::from(vec![0, 1, 2, 3]).with_timezone(UTC)),
                    "device_id" => Arc::new(StringArray::from(vec!["n-1", "g-1", "g-2", "n-2"])),
                    "district" => Arc::new(StringArray::from(vec!["haidian"; 4])),
                    "kind" => Arc::new(StringArray::from(vec![
                        Some("noise"),
                        Some("gas_lel"),
                        None,
                        Some("noise"),
                    ])),
                    "value" => Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
                    _ => datafusion::arrow::array::new_null_array(field.data_type(), 4),
                }
            })
            .collect();
        RecordBatch::try_new(Arc::clone(&def.schema), columns).unwrap()
    }

    fn filters_in(rule: &CompiledRule) -> usize {
        let mut filters = 0;
        rule.plan
            .apply(|node| {
                filters += usize::from(node.downcast_ref::<FilterExec>().is_some());
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        filters
    }

    #[test]
    fn where_clause_moves_from_the_plan_to_the_worker_and_the_leaf_reads_only_used_columns() {
        let rule = compiled(
            "SELECT district, device_id, max(value) AS peak FROM sensor WHERE kind = 'noise' \
             GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id HAVING max(value) > 0",
        );
        let mask = rule.passing(&sensor_rows()).unwrap().unwrap();
        assert_eq!(mask, BooleanArray::from(vec![true, false, false, true]));
        assert_eq!(mask.null_count(), 0);
        // Only HAVING's filter is left; the leaf is fed neither `kind` nor unused columns.
        assert_eq!(filters_in(&rule), 1);
        let fed: Vec<&str> = rule.feed_schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(fed, ["device_id", "district", "value", WINDOW_START, WINDOW_END]);

        let rows = UInt32Array::from(vec![0, 3]);
        let input = rule
            .input_of(
                &sensor_rows(),
                Some(&rows),
                EngineColumns::Window { start: 0, end: 60_000 },
            )
            .unwrap();
        assert_eq!(input.num_rows(), 2);
        assert_eq!(input.column(2).as_primitive::<Float64Type>().values(), &[1.0, 4.0]);
        let ends = input
            .column(4)
            .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
        assert_eq!(ends.values(), &[60_000, 60_000]);
    }

    #[test]
    fn a_volatile_where_clause_stays_in_the_plan() {
        let rule = compiled("SELECT district, device_id, value FROM sensor WHERE random() < 2 AND kind = 'noise'");
        assert!(rule.passing(&sensor_rows()).unwrap().is_none());
        assert_eq!(filters_in(&rule), 1);
    }

    #[test]
    fn row_rules_evaluate_their_where_clause_ahead_too() {
        let rule = compiled("SELECT district, device_id, value FROM sensor WHERE kind = 'gas_lel' AND value >= 2");
        let mask = rule.passing(&sensor_rows()).unwrap().unwrap();
        assert_eq!(mask, BooleanArray::from(vec![false, true, false, false]));
        assert_eq!(filters_in(&rule), 0);
    }

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
