//! The DataFusion session each rule is planned in, sandboxed: one partition, no dynamic
//! filters, a memory limit, and read-only SQL only. The rule's table is registered as a
//! channel-fed `StreamingTable` (`rules::feed`) over the feed schema: the table's columns
//! plus the ones the engine adds for the rule's kind (`window_start`/`window_end`, or the
//! row index). (Not to be confused with session windows, `window::session`.)

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};

use super::RuleKind;
use crate::config::EngineConfig;
use crate::rules::feed::Feed;
use crate::rules::sql::AnalyzedSql;
use crate::schema::{ROW_INDEX, TableDef, WINDOW_END, WINDOW_START, timestamp_type};

/// The schema a rule's table is fed with: the table's columns, then the engine's for `kind`.
pub(super) fn feed_schema(table: &TableDef, kind: RuleKind) -> SchemaRef {
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

/// A rule's own session, with `table` registered as a stream over `feed_schema`; returns
/// the session and the feed its plan's leaf reads.
pub(super) fn sandboxed_session(
    engine: &EngineConfig,
    table: &str,
    feed_schema: &SchemaRef,
) -> Result<(SessionContext, Arc<Feed>), DataFusionError> {
    let feed = Arc::new(Feed::new(Arc::clone(feed_schema)));
    let ctx = rule_session(engine)?;
    let provider = StreamingTable::try_new(Arc::clone(feed_schema), vec![Arc::clone(&feed) as _])?;
    ctx.register_table(table, Arc::new(provider))?;
    Ok((ctx, feed))
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

/// Plans the rule's (rewritten) statement, refusing DDL, DML and other statements.
pub(super) async fn plan_logical(ctx: &SessionContext, analyzed: &AnalyzedSql) -> Result<LogicalPlan, DataFusionError> {
    let statement = datafusion::sql::parser::Statement::Statement(Box::new(analyzed.statement.clone()));
    let plan = ctx.state().statement_to_plan(statement).await?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)?;
    Ok(plan)
}
