//! Running a compiled rule, on the evaluation path: which rows of a table batch pass its
//! WHERE clause ahead of the plan (`passing`, `passing_in`), the narrowed batch its plan reads with the
//! engine's columns appended (`input_of`, `EngineColumns`), one execution of the plan
//! over a stream of such batches (`execute`, `stream_of`), and, for a plan split at its
//! aggregation, the rule's own part over a closed window's aggregation result
//! (`finish_window`).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::take;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use super::CompiledRule;
use crate::flow::TableBatch;
use crate::schema::UTC;
use crate::time::EpochMs;

/// The values of the columns the engine adds to a table's rows for a rule.
#[derive(Debug, Clone, Copy)]
pub enum EngineColumns<'a> {
    /// Window rules: the window (or session) the rows belong to.
    Window { start: EpochMs, end: EpochMs },
    /// Row rules: each row's position in its batch.
    RowIndex(&'a ArrayRef),
}

impl CompiledRule {
    /// Starts one evaluation over `input`; the returned stream yields the rule's result rows.
    pub fn execute(&self, input: SendableRecordBatchStream) -> Result<SendableRecordBatchStream, DataFusionError> {
        let what = (self.id.as_str(), "input");
        self.feed.execute(&self.plan, Arc::clone(&self.task_ctx), input, what)
    }

    /// A closed window's result rows from what the plan fed by `execute` gave: the upper
    /// part of a split plan run over that aggregation result, else the rows themselves.
    pub async fn finish_window(&self, aggregated: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, DataFusionError> {
        let Some(upper) = &self.upper else {
            return Ok(aggregated);
        };
        let input = Box::pin(RecordBatchStreamAdapter::new(
            self.plan.schema(),
            futures::stream::iter(aggregated.into_iter().map(Ok)),
        ));
        let what = (self.id.as_str(), "aggregation result");
        collect(
            upper
                .feed
                .execute(&upper.plan, Arc::clone(&self.task_ctx), input, what)?,
        )
        .await
    }

    /// `passing` for a flushed table batch: when the batch's gated column holds none of the
    /// values the rule's WHERE clause requires (`leaf::Gate`), no row passes, known from the
    /// batch's distinct values without evaluating the clause.
    pub fn passing_in(&self, input: &TableBatch) -> Result<Option<BooleanArray>, DataFusionError> {
        if let Some(gate) = &self.gate
            && let Some(present) = input.distinct.of(&input.batch, gate.column)
            && !gate.values.iter().any(|value| present.contains(value))
        {
            let none = BooleanBuffer::new_unset(input.batch.num_rows());
            return Ok(Some(BooleanArray::new(none, None)));
        }
        self.passing(&input.batch)
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
    pub fn stream_of(&self, batches: Vec<RecordBatch>) -> SendableRecordBatchStream {
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.feed_schema),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::Float64Type;
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::physical_plan::filter::FilterExec;

    use crate::config::EngineConfig;
    use crate::rules::compile::compile;
    use crate::rules::loader::parse_rule;
    use crate::schema::{Catalog, WINDOW_END, WINDOW_START};

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

    /// Filters in the rule's plan, both parts when it was split.
    fn filters_in(rule: &CompiledRule) -> usize {
        let mut filters = 0;
        for plan in std::iter::once(&rule.plan).chain(rule.upper.as_ref().map(|u| &u.plan)) {
            plan.apply(|node| {
                filters += usize::from(node.downcast_ref::<FilterExec>().is_some());
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        }
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

    fn table_batch(batch: RecordBatch) -> TableBatch {
        let rows = batch.num_rows();
        TableBatch {
            table: 0,
            batch,
            arrivals_ns: vec![0; rows],
            at_ms: vec![0; rows],
            topics: StringArray::from(vec!["t"; rows]),
            first_seq: 0,
            rebuild: false,
            late: Default::default(),
            distinct: Default::default(),
            ts_range: Default::default(),
        }
    }

    #[test]
    fn a_batch_without_the_values_a_where_clause_requires_passes_no_row() {
        let rule =
            compiled("SELECT district, device_id, value FROM sensor WHERE kind IN ('aqi', 'gas_lel') AND value >= 2");
        let gate = rule.gate.clone().unwrap();
        assert_eq!(gate.values, ["aqi", "gas_lel"]);
        // A batch with gas_lel rows is evaluated as ever.
        let mixed = table_batch(sensor_rows());
        assert_eq!(
            rule.passing_in(&mixed).unwrap(),
            Some(BooleanArray::from(vec![false, true, false, false]))
        );
        // A batch of noise rows only passes none, without evaluating the clause.
        let noise = table_batch(sensor_rows().slice(3, 1));
        assert_eq!(rule.passing_in(&noise).unwrap(), Some(BooleanArray::from(vec![false])));
        assert_eq!(
            noise
                .distinct
                .of(&noise.batch, gate.column)
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            ["noise"]
        );
        // A clause that can pass any kind has no gate.
        let either = compiled("SELECT district, device_id, value FROM sensor WHERE kind = 'aqi' OR value >= 2");
        assert!(either.gate.is_none());
    }

    #[test]
    fn row_rules_evaluate_their_where_clause_ahead_too() {
        let rule = compiled("SELECT district, device_id, value FROM sensor WHERE kind = 'gas_lel' AND value >= 2");
        let mask = rule.passing(&sensor_rows()).unwrap().unwrap();
        assert_eq!(mask, BooleanArray::from(vec![false, true, false, false]));
        assert_eq!(filters_in(&rule), 0);
    }
}
