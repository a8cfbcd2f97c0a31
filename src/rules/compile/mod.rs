//! Planning a rule once with DataFusion, in named steps: a sandboxed session per rule with
//! the rule's table registered as a channel-fed `StreamingTable` (`sandbox`), the rewritten
//! SQL planned to a physical plan, the output columns sorted into alert key, level and
//! values (`layout`), the alert lifecycle read from the header (`policy`), and every failure
//! reported as a `path:line:col` problem (`diagnostics`). This module owns the result,
//! `CompiledRule`, and runs the steps in order (`compile`); `execution` is what the worker
//! calls on a compiled rule. Planning never happens on the evaluation path.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNode;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::feed::Feed;
use super::leaf::{Gate, gate_of, narrow_leaf, without_leaf_filter};
use super::loader::RuleFile;
use super::problem::Problem;
use super::sql::{analyze, lint};
use crate::alert::lifecycle::{FireAfter, Policy};
use crate::alert::warning::RuleInfo;
use crate::config::EngineConfig;
use crate::level::Level;
use crate::schema::{Catalog, DEVICE_ID, DEVICES, WINDOW_END, WINDOW_START, devices_schema};
use crate::window::{WindowSpec, Windowing};

mod diagnostics;
mod execution;
mod family;
mod layout;
mod policy;
mod sandbox;

pub use execution::EngineColumns;
pub(crate) use layout::{OutputLayout, SessionKey};

use diagnostics::{df_problem, unknown_table};
use family::{FamilyTraits, UpperPlan, split_at_aggregate};
use layout::{output_layout, session_key};
use policy::lifecycle_policy;
use sandbox::{feed_schema, plan_logical, sandboxed_session};

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
    /// Session rules: the GROUP BY columns, which partition the sessions.
    pub session_key: SessionKey,
    /// FNV-1a of the rule's text, to tell versions apart.
    pub version: String,
    /// The family the rule runs in, when it can share: for window rules whose plans split
    /// at their aggregation, the fingerprint of the lower part (`compile::family`); for
    /// `devices` rules, the tables they watch; for row rules, their table.
    pub family: Option<String>,
    /// Whether its results depend on one device's readings at a time (row rules, and
    /// window, session and `devices` rules grouped by `device_id`), so that a cluster
    /// partition, which holds whole devices, computes it alone. Rules over many devices
    /// (per district, city-wide) need every partition's readings: on a cluster they run in
    /// the whole-stream slot (`cluster::partition`).
    pub per_device: bool,
    /// The plan the worker feeds: the whole plan, or the lower part of a split one.
    plan: Arc<dyn ExecutionPlan>,
    /// A split plan's upper part, run over a closed window's aggregation result.
    upper: Option<UpperPlan>,
    feed: Arc<Feed>,
    task_ctx: Arc<TaskContext>,
    /// The rule's WHERE clause over the table's own columns, when the plan filters right
    /// above its leaf and the clause is deterministic: the worker drops failing rows before
    /// they reach the plan, whose filter is then dropped.
    prefilter: Option<Arc<dyn PhysicalExpr>>,
    /// The values the WHERE clause requires of one text column, when it requires any.
    gate: Option<Gate>,
    /// Per column of `feed_schema`: its position among the table's columns followed by the
    /// engine's.
    input_columns: Vec<usize>,
    /// How many of those positions are the table's.
    table_width: usize,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Plans every rule; returns the ones that compiled and every problem (errors and warnings).
pub(crate) async fn compile_all(
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
    // DataFusion's errors point at their span in the SQL, else at the query's start.
    let planning_failed = |e: DataFusionError| vec![df_problem(path, &e, start)];

    // The table, the kind of rule, and the rule's own session reading the table.
    let devices = analyzed.table == DEVICES;
    let table_def = catalog.get(&analyzed.table);
    if table_def.is_none() && !devices {
        return Err(vec![unknown_table(path, &rule.text, &analyzed.table, catalog, start)]);
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
    let (ctx, feed) = sandboxed_session(engine, &analyzed.table, &feed_schema).map_err(planning_failed)?;

    // The plans.
    let logical = plan_logical(&ctx, &analyzed).await.map_err(planning_failed)?;
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
        .map_err(planning_failed)?;

    // What the output means, and when its alerts fire and resolve.
    let layout = output_layout(rule, &analyzed, kind, table_def.map(|t| t.as_ref()), &plan.schema())?;
    let policy = lifecycle_policy(rule, kind)?;

    // What the worker feeds the plan: rows passing the WHERE clause, only the columns used.
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
        _ => narrow_leaf(plan, feed, feed_schema).map_err(planning_failed)?,
    };
    let session_key = match (kind, table_def) {
        (RuleKind::Session { .. }, Some(def)) => session_key(rule, &analyzed, def, &layout, &plan.schema(), start)?,
        _ => SessionKey::default(),
    };
    // Keyed by its window, each session is one alert with one chance to breach.
    if matches!(kind, RuleKind::Session { .. })
        && layout
            .key
            .iter()
            .any(|(name, _)| name == WINDOW_START || name == WINDOW_END)
        && matches!(policy.fire_after, FireAfter::Windows(n) if n > 1)
    {
        return Err(vec![Problem::error(
            path,
            start.0,
            start.1,
            "a session rule keyed by its window judges each session once, so `for` cannot exceed 1",
        )]);
    }

    // A window rule's aggregation can be shared by the rules computing the same one.
    let lateness_ms = header.lateness_ms.unwrap_or(engine.lateness.0);
    let split = match kind {
        RuleKind::Window(_) if engine.rule_families => split_at_aggregate(&plan),
        _ => None,
    };
    let (plan, upper, shared_aggregation) = match (kind, split) {
        (RuleKind::Window(spec), Some(split)) => {
            let traits = FamilyTraits {
                table: &analyzed.table,
                spec,
                lateness_ms,
                prefilter: prefilter.as_ref(),
                input_columns: &input_columns,
                lower: &split.lower,
            };
            let fingerprint = traits.fingerprint();
            (split.lower, Some(split.upper), Some(fingerprint))
        }
        _ => (plan, None, None),
    };

    let watched = match kind {
        RuleKind::Devices => {
            let names: Vec<String> = catalog.tables().iter().map(|t| t.name.clone()).collect();
            super::watched::watched_tables(&logical, &names)
        }
        _ => vec![table],
    };
    // The family the rule runs in: window rules sharing an aggregation, `devices` rules
    // watching the same tables (one watch of their devices), or a table's row rules (one
    // task, each judging by itself). Session rules run alone.
    let family = match kind {
        _ if !engine.rule_families => None,
        RuleKind::Window(_) => shared_aggregation,
        RuleKind::Devices => Some(format!("devices of tables {watched:?}")),
        RuleKind::Row => Some(format!("row rules of {}", analyzed.table)),
        RuleKind::Session { .. } => None,
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
        lateness_ms,
        feed_schema,
        layout,
        session_key,
        version: rule.version(),
        family,
        per_device: kind == RuleKind::Row || analyzed.group_columns.iter().any(|c| c == DEVICE_ID),
        plan,
        upper,
        feed,
        task_ctx: ctx.task_ctx(),
        gate: prefilter.as_ref().and_then(gate_of),
        prefilter,
        input_columns,
        table_width,
    };
    smoke_test(&compiled).await.map_err(planning_failed)?;
    Ok((compiled, warnings))
}

/// Runs the plan once over no rows, so a rule that cannot execute fails at load time.
async fn smoke_test(rule: &CompiledRule) -> Result<(), DataFusionError> {
    let stream = rule.execute(rule.stream_of(Vec::new()))?;
    let output = datafusion::physical_plan::common::collect(stream).await?;
    rule.finish_window(output).await.map(|_| ())
}
