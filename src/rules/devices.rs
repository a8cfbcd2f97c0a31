//! The `devices` table: when each device of each table was last seen, kept by the engine
//! from every table's rows, so "station silent for 10 minutes" is a plain
//! `WHERE silent_s >= 600`. Each table's devices are judged as a snapshot whenever that
//! table's own event time passes a minute: tables arrive from different decode workers, so
//! only a table's own clock is ordered with its rows. A snapshot is cut at the row that
//! passes the minute, before that row is counted, so batching never changes results.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::error::ArrowError;

use crate::batch::TableBatch;
use crate::schema::{UTC, devices_schema};
use crate::time::EpochMs;

/// How often the snapshot is judged, in event time.
pub const EVALUATE_EVERY_MS: EpochMs = 60_000;

/// A snapshot of one table's devices, due for judgement.
#[derive(Debug)]
pub struct Snapshot {
    pub table_name: String,
    pub at_ms: EpochMs,
    pub batch: RecordBatch,
    /// The row (of the batch being observed) whose arrival made it due, if a row did.
    pub row: Option<usize>,
}

/// Last-seen times of the devices of one table, and that table's event time.
#[derive(Debug, Default)]
struct TableWatch {
    /// device → (district, last ts), in the order devices were first seen: snapshots list
    /// devices in that (deterministic) order without sorting a whole city every minute.
    last_seen: indexmap::IndexMap<String, (String, EpochMs), foldhash::fast::RandomState>,
    /// Max `ts` seen (or advanced while the table is idle).
    clock: Option<EpochMs>,
    /// Max `ts` of the rows themselves, the base of idle time.
    row_max: Option<EpochMs>,
    next_evaluation: Option<EpochMs>,
}

/// Last-seen times of every device of every table.
#[derive(Debug)]
pub struct DeviceWatch {
    table_names: Vec<String>,
    tables: Vec<TableWatch>,
}

impl DeviceWatch {
    pub fn new(table_names: Vec<String>) -> Self {
        let tables = table_names.iter().map(|_| TableWatch::default()).collect();
        DeviceWatch { table_names, tables }
    }

    /// Takes a batch's rows in order; returns the snapshots that became due.
    /// Devices watched now, over every table.
    pub fn watched(&self) -> usize {
        self.tables.iter().map(|t| t.last_seen.len()).sum()
    }

    pub fn observe(&mut self, input: &TableBatch) -> Result<Vec<Snapshot>, ArrowError> {
        let batch = &input.batch;
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let devices = batch.column(1).as_string::<i32>();
        let districts = batch.column(2).as_string::<i32>();
        let mut due = Vec::new();
        if input.table >= self.tables.len() {
            return Ok(due);
        }
        for i in 0..batch.num_rows() {
            let t = ts.value(i);
            if let Some(snapshot) = self.advance(input.table, t, Some(i))? {
                due.push(snapshot);
            }
            let watch = &mut self.tables[input.table];
            let (device, district) = (devices.value(i), districts.value(i));
            // A known device is updated in place: no allocation on the hot path.
            match watch.last_seen.get_mut(device) {
                Some(seen) => {
                    if seen.0 != district {
                        seen.0.clear();
                        seen.0.push_str(district);
                    }
                    seen.1 = seen.1.max(t);
                }
                None => {
                    watch.last_seen.insert(device.to_string(), (district.to_string(), t));
                }
            }
            watch.row_max = watch.row_max.max(Some(t));
        }
        Ok(due)
    }

    /// A silent table: event time advances with the clock since its last row.
    pub fn idle(
        &mut self,
        table: usize,
        now_ms: EpochMs,
        last_arrival_ms: EpochMs,
    ) -> Result<Option<Snapshot>, ArrowError> {
        let Some(base) = self.tables.get(table).and_then(|w| w.row_max) else {
            return Ok(None);
        };
        self.advance(table, base + (now_ms - last_arrival_ms).max(0), None)
    }

    /// Moves event time to `t`; cuts a snapshot when a minute boundary is passed. After a
    /// long jump only the latest boundary is judged: the ones between see the same devices.
    fn advance(&mut self, table: usize, t: EpochMs, row: Option<usize>) -> Result<Option<Snapshot>, ArrowError> {
        let watch = &mut self.tables[table];
        if watch.clock.is_some_and(|c| t <= c) {
            return Ok(None);
        }
        watch.clock = Some(t);
        let boundary = t.div_euclid(EVALUATE_EVERY_MS) * EVALUATE_EVERY_MS;
        match watch.next_evaluation {
            None => {
                watch.next_evaluation = Some(boundary + EVALUATE_EVERY_MS);
                Ok(None)
            }
            Some(next) if t >= next => {
                watch.next_evaluation = Some(boundary + EVALUATE_EVERY_MS);
                let table_name = self.table_names[table].clone();
                let batch = self.snapshot(table, boundary)?;
                Ok(Some(Snapshot {
                    table_name,
                    at_ms: boundary,
                    batch,
                    row,
                }))
            }
            Some(_) => Ok(None),
        }
    }

    fn snapshot(&self, table: usize, at_ms: EpochMs) -> Result<RecordBatch, ArrowError> {
        let name = self.table_names[table].as_str();
        let rows: Vec<(&str, &str, &str, EpochMs)> = self.tables[table]
            .last_seen
            .iter()
            .map(|(device, (district, seen))| (name, device.as_str(), district.as_str(), *seen))
            .collect();
        let n = rows.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.3)).with_timezone(UTC)),
            Arc::new(TimestampMillisecondArray::from_value(at_ms, n).with_timezone(UTC)),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| (at_ms - r.3) as f64 / 1_000.0),
            )),
        ];
        RecordBatch::try_new(devices_schema(), columns)
    }
}
