//! `devices` rules: each table's device snapshot is judged when that table's event time
//! passes a minute (`rules::devices`).

use super::*;

impl RuleWorker {
    // ---- devices rules ----------------------------------------------------------------

    pub(super) async fn on_devices_batch(&mut self, input: &TableBatch) -> Result<(), DataFusionError> {
        let Some(watch) = self.devices.as_mut() else {
            return Ok(());
        };
        let due = watch.observe(input)?;
        let now_ns = self.ctx.metrics.now_ns();
        for snapshot in due {
            let arrived_ns = snapshot.row.map(|r| input.arrivals_ns[r]).unwrap_or(now_ns);
            self.judge_snapshot(snapshot, arrived_ns).await?;
        }
        Ok(())
    }

    /// Judges a `devices` snapshot: a breach per result row, a clean step for every other
    /// live alert.
    pub(super) async fn judge_snapshot(&mut self, snapshot: Snapshot, arrived_ns: u64) -> Result<(), DataFusionError> {
        let output = collect(self.rule.execute(self.rule.stream_of(vec![snapshot.batch]))?).await?;
        self.health.evaluated(snapshot.at_ms);
        let detected_ms = self.detected(snapshot.at_ms);
        let mut breached = HashSet::new();
        for out in &output {
            for r in 0..out.num_rows() {
                let found = Found {
                    window: None,
                    event_ms: snapshot.at_ms,
                    detected_ms,
                    arrived_ns,
                };
                breached.insert(self.breach_row(out, r, found).await);
            }
        }
        // The snapshot covered one table: only that table's alerts can be clean.
        let table = serde_json::Value::String(snapshot.table_name.clone());
        let judged = |key: &crate::alert::lifecycle::AlertKey| {
            key.fields
                .iter()
                .all(|(name, value)| name != crate::schema::TABLE_NAME || *value == table)
        };
        for t in self.lifecycle.clean_where(
            &breached,
            CleanStep {
                window: None,
                detected_ms,
                arrived_ns,
            },
            judged,
        ) {
            self.emit(t).await;
        }
        Ok(())
    }

    pub(super) async fn idle_devices(
        &mut self,
        table: usize,
        now_ms: EpochMs,
        last_arrival_ms: EpochMs,
        arrived_ns: u64,
    ) {
        let Some(watch) = self.devices.as_mut() else { return };
        let judged = match watch.idle(table, now_ms, last_arrival_ms) {
            Ok(Some(snapshot)) => self.judge_snapshot(snapshot, arrived_ns).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = judged {
            self.fail(&e);
        }
    }
}
