//! `devices` rules: each table's device snapshot is judged when that table's event time
//! passes a minute (`rules::devices`). The `devices` rules watching the same tables form a
//! family sharing one watch; each judges every snapshot with its own plan.

use std::collections::HashSet;

use datafusion::error::DataFusionError;
use datafusion::physical_plan::common::collect;

use super::judge::{Found, Judge};
use crate::alert::lifecycle::{AlertKey, CleanStep};
use crate::flow::TableBatch;
use crate::rules::devices::{DeviceWatch, Snapshot};
use crate::schema::TABLE_NAME;
use crate::state::snapshot::DevicesSnapshot;
use crate::time::EpochMs;

/// A `devices` family's state: the devices seen on each watched table and when. A new
/// version of the family takes it over (`RuleWorker::take_over`).
#[derive(Clone)]
pub(super) struct DevicesState {
    watch: DeviceWatch,
}

impl DevicesState {
    pub(super) fn new(table_names: Vec<String>) -> Self {
        DevicesState {
            watch: DeviceWatch::new(table_names),
        }
    }

    /// The devices' last-seen times, as checkpoint data.
    pub(super) fn snapshot(&self) -> DevicesSnapshot {
        self.watch.save()
    }

    /// Takes back a checkpoint's devices.
    pub(super) fn restore(&mut self, saved: DevicesSnapshot) {
        self.watch.restore(saved);
    }

    /// How many devices are watched.
    pub(super) fn watched(&self) -> usize {
        self.watch.watched()
    }

    /// Notes a batch's devices; each member judges the snapshots the batch's event time
    /// made due.
    pub(super) async fn on_batch(&mut self, judges: &mut [Judge], input: &TableBatch) -> Result<(), DataFusionError> {
        let due = self.watch.observe(input)?;
        for snapshot in due {
            for judge in judges.iter_mut() {
                let arrived_ns = snapshot
                    .row
                    .map(|r| input.arrivals_ns[r])
                    .unwrap_or_else(|| judge.ctx.metrics.now_ns());
                if let Err(e) = judge_snapshot(judge, &snapshot, arrived_ns).await {
                    judge.fail(&e);
                }
            }
        }
        Ok(())
    }

    /// A table is idle: its snapshot is judged when the clock says a minute has passed.
    pub(super) async fn on_idle(
        &mut self,
        judges: &mut [Judge],
        table: usize,
        now_ms: EpochMs,
        last_arrival_ms: EpochMs,
        arrived_ns: u64,
    ) {
        let snapshot = match self.watch.idle(table, now_ms, last_arrival_ms) {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return,
            Err(e) => {
                let e = DataFusionError::from(e);
                judges.iter_mut().for_each(|judge| judge.fail(&e));
                return;
            }
        };
        for judge in judges.iter_mut() {
            if let Err(e) = judge_snapshot(judge, &snapshot, arrived_ns).await {
                judge.fail(&e);
            }
        }
    }
}

/// Judges a `devices` snapshot: a breach per result row, a clean step for every other
/// live alert.
async fn judge_snapshot(judge: &mut Judge, snapshot: &Snapshot, arrived_ns: u64) -> Result<(), DataFusionError> {
    let output = collect(judge.rule.execute(judge.rule.stream_of(vec![snapshot.batch.clone()]))?).await?;
    judge.health.evaluated(snapshot.at_ms);
    let detected_ms = judge.detected(snapshot.at_ms);
    let mut breached = HashSet::new();
    for out in &output {
        for r in 0..out.num_rows() {
            let found = Found {
                window: None,
                event_ms: snapshot.at_ms,
                detected_ms,
                arrived_ns,
            };
            breached.insert(judge.breach_row(out, r, found).await);
        }
    }
    // The snapshot covered one table: only that table's alerts can be clean.
    let table = serde_json::Value::String(snapshot.table_name.clone());
    let judged = |key: &AlertKey| {
        key.fields
            .iter()
            .all(|(name, value)| name != TABLE_NAME || *value == table)
    };
    for t in judge.lifecycle.clean_where(
        &breached,
        CleanStep {
            window: None,
            detected_ms,
            arrived_ns,
        },
        judged,
    ) {
        judge.emit(t).await;
    }
    Ok(())
}
