//! Row rules: each batch's rows that pass the WHERE clause are evaluated once, then the lifecycle steps row by row in arrival
//! order: a breach for each result row, a clean step for other rows of keys with alerts.

use super::*;

impl RuleWorker {
    // ---- row rules -------------------------------------------------------------------

    pub(super) async fn on_row_batch(&mut self, input: &TableBatch) -> Result<(), DataFusionError> {
        let batch = &input.batch;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        // Rows failing the WHERE clause are left out; each fed row keeps its batch position.
        let passing = self.rule.passing(batch)?.filter(|mask| mask.true_count() < rows);
        let output = match passing {
            Some(mask) if mask.true_count() == 0 => Vec::new(),
            passing => {
                let kept = passing.map(|mask| (0..rows as u32).filter(|&i| mask.value(i as usize)).collect());
                let index: ArrayRef = match &kept {
                    Some(kept) => Arc::new(UInt32Array::clone(kept)),
                    None => Arc::new(UInt32Array::from_iter_values(0..rows as u32)),
                };
                let fed = self
                    .rule
                    .input_of(batch, kept.as_ref(), EngineColumns::RowIndex(&index))?;
                collect(self.rule.execute(self.rule.stream_of(vec![fed]))?).await?
            }
        };

        // With no breach and no alert a clean row could step, there is nothing to judge.
        if output.iter().any(|out| out.num_rows() > 0) || !self.lifecycle.is_empty() {
            self.judge_rows(input, &output).await;
        }
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        if let Some(last) = ts.values().iter().max() {
            self.health.evaluated(*last);
        }
        Ok(())
    }

    /// Steps the lifecycle row by row in arrival order: a breach for each row with a result
    /// row in `output`, a clean step for every other row of a key with an alert.
    async fn judge_rows(&mut self, input: &TableBatch, output: &[RecordBatch]) {
        let batch = &input.batch;
        let mut breach_at: Vec<Option<(usize, usize)>> = vec![None; batch.num_rows()];
        let row_index = self.rule.layout.row_index.unwrap_or_default();
        for (b, out) in output.iter().enumerate() {
            let indices = out.column(row_index).as_primitive::<UInt32Type>();
            for r in 0..out.num_rows() {
                if let Some(slot) = breach_at.get_mut(indices.value(r) as usize) {
                    *slot = Some((b, r));
                }
            }
        }
        // One wall-clock read per batch (live sources), not one per row.
        let wall_ms = (self.ctx.clock == DetectionClock::Wall).then(wall_now_ms);
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        for (i, breach) in breach_at.into_iter().enumerate() {
            let event_ms = ts.value(i);
            let detected_ms = wall_ms.unwrap_or(event_ms);
            let arrived_ns = input.arrivals_ns[i];
            let transition = match breach {
                Some((b, r)) => {
                    self.health.breaches.fetch_add(1, Ordering::Relaxed);
                    let out = &output[b];
                    let level = self.level(out, r);
                    self.lifecycle.breach(Evidence {
                        key: key_of(batch, i, &self.rule.layout.key),
                        level,
                        values: values_of(out, r, &self.rule.layout.values),
                        window: None,
                        event_ms,
                        detected_ms,
                        arrived_ns,
                    })
                }
                None if !self.lifecycle.is_empty() => {
                    let key = key_of(batch, i, &self.rule.layout.key);
                    self.lifecycle.clean(
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
                self.emit(t).await;
            }
        }
    }
}
