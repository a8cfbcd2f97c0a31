//! Row rules: each batch's rows that pass the WHERE clause are evaluated once, then the
//! lifecycle steps row by row in arrival order: a breach for each result row, a clean step
//! for other rows of keys with alerts.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{TimestampMillisecondType, UInt32Type};
use datafusion::error::DataFusionError;
use datafusion::physical_plan::common::collect;

use super::DetectionClock;
use super::judge::Judge;
use crate::alert::lifecycle::{CleanStep, Evidence};
use crate::flow::TableBatch;
use crate::rules::compile::EngineColumns;
use crate::rules::output::{key_of, values_of};
use crate::time::wall_now_ms;

/// A row rule keeps nothing between batches: each batch is judged whole.
pub(super) struct RowState;

impl RowState {
    /// Evaluates a batch's passing rows and steps the lifecycle row by row.
    pub(super) async fn on_batch(&self, judge: &mut Judge, input: &TableBatch) -> Result<(), DataFusionError> {
        let batch = &input.batch;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let rule = &judge.rule;
        // Rows failing the WHERE clause are left out; each fed row keeps its batch position.
        let passing = rule.passing_in(input)?.filter(|mask| mask.true_count() < rows);
        let output = match passing {
            Some(mask) if mask.true_count() == 0 => Vec::new(),
            passing => {
                let kept = passing.map(|mask| (0..rows as u32).filter(|&i| mask.value(i as usize)).collect());
                let index: ArrayRef = match &kept {
                    Some(kept) => Arc::new(UInt32Array::clone(kept)),
                    None => Arc::new(UInt32Array::from_iter_values(0..rows as u32)),
                };
                let fed = rule.input_of(batch, kept.as_ref(), EngineColumns::RowIndex(&index))?;
                collect(rule.execute(rule.stream_of(vec![fed]))?).await?
            }
        };

        // With no breach and no alert a clean row could step, there is nothing to judge.
        if output.iter().any(|out| out.num_rows() > 0) || !judge.lifecycle.is_empty() {
            judge_rows(judge, input, &output).await;
        }
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        if let Some(last) = ts.values().iter().max() {
            judge.health.evaluated(*last);
        }
        Ok(())
    }
}

/// Steps the lifecycle row by row in arrival order: a breach for each row with a result
/// row in `output`, a clean step for every other row of a key with an alert.
async fn judge_rows(judge: &mut Judge, input: &TableBatch, output: &[RecordBatch]) {
    let batch = &input.batch;
    let mut breach_at: Vec<Option<(usize, usize)>> = vec![None; batch.num_rows()];
    let row_index = judge.rule.layout.row_index.unwrap_or_default();
    for (b, out) in output.iter().enumerate() {
        let indices = out.column(row_index).as_primitive::<UInt32Type>();
        for r in 0..out.num_rows() {
            if let Some(slot) = breach_at.get_mut(indices.value(r) as usize) {
                *slot = Some((b, r));
            }
        }
    }
    // One wall-clock read per batch (live sources), not one per row.
    let wall_ms = (judge.ctx.clock == DetectionClock::Wall).then(wall_now_ms);
    let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
    for (i, breach) in breach_at.into_iter().enumerate() {
        let event_ms = ts.value(i);
        let detected_ms = wall_ms.unwrap_or(event_ms);
        let arrived_ns = input.arrivals_ns[i];
        let transition = match breach {
            Some((b, r)) => {
                judge.health.breaches.fetch_add(1, Ordering::Relaxed);
                let out = &output[b];
                let level = judge.level(out, r);
                judge.lifecycle.breach(Evidence {
                    key: key_of(batch, i, &judge.rule.layout.key),
                    level,
                    values: values_of(out, r, &judge.rule.layout.values),
                    window: None,
                    event_ms,
                    detected_ms,
                    arrived_ns,
                })
            }
            None if !judge.lifecycle.is_empty() => {
                let key = key_of(batch, i, &judge.rule.layout.key);
                judge.lifecycle.clean(
                    &key.id,
                    CleanStep {
                        window: None,
                        detected_ms,
                        arrived_ns,
                    },
                )
            }
            None => None,
        };
        if let Some(t) = transition {
            judge.emit(t).await;
        }
    }
}
