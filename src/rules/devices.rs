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

use crate::flow::TableBatch;
use crate::schema::{UTC, devices_schema};
use crate::state::snapshot::{DevicesSnapshot, TableDevicesSnapshot};
use crate::time::EpochMs;
use crate::window::idle_event_ms;

/// How often the snapshot is judged, in event time.
pub(crate) const EVALUATE_EVERY_MS: EpochMs = 60_000;

/// A snapshot of one table's devices, due for judgement.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub table_name: String,
    pub at_ms: EpochMs,
    pub batch: RecordBatch,
    /// The row (of the batch being observed) whose arrival made it due, if a row did.
    pub row: Option<usize>,
}

/// Last-seen times of the devices of one table, and that table's event time.
#[derive(Debug, Default, Clone)]
struct TableWatch {
    /// device → (district number in `districts`, last ts), in the order devices were first
    /// seen: snapshots list devices in that (deterministic) order without sorting a whole
    /// city every minute.
    last_seen: indexmap::IndexMap<String, (u32, EpochMs), foldhash::fast::RandomState>,
    /// The districts of the table's devices: a city has a few dozen, shared by thousands of
    /// devices, so each device keeps a number (no string of its own, and no second pointer
    /// to follow when a row is checked against it).
    districts: Districts,
    /// Max `ts` seen (or advanced while the table is idle).
    clock: Option<EpochMs>,
    /// Max `ts` of the rows themselves, the base of idle time.
    row_max: Option<EpochMs>,
    next_evaluation: Option<EpochMs>,
    /// Where in `last_seen` the next row's device is looked for first: just after the last
    /// row's. Devices report in much the same order every interval, and that is the order
    /// they were first seen in, so most rows find their device there with one comparison,
    /// no hashing and no jump across a city-sized map.
    hint: usize,
}

/// District names, numbered in the order first seen.
#[derive(Debug, Default, Clone)]
struct Districts {
    names: Vec<String>,
    numbers: std::collections::HashMap<String, u32, foldhash::fast::RandomState>,
}

impl Districts {
    /// The number of `name`, given one when new.
    fn number(&mut self, name: &str) -> u32 {
        if let Some(number) = self.numbers.get(name) {
            return *number;
        }
        let number = self.names.len() as u32;
        self.names.push(name.to_string());
        self.numbers.insert(name.to_string(), number);
        number
    }

    fn name(&self, number: u32) -> &str {
        self.names.get(number as usize).map_or("", String::as_str)
    }
}

/// Last-seen times of every device of every table.
#[derive(Debug, Clone)]
pub(crate) struct DeviceWatch {
    table_names: Vec<String>,
    tables: Vec<TableWatch>,
}

impl DeviceWatch {
    pub(crate) fn new(table_names: Vec<String>) -> Self {
        let tables = table_names.iter().map(|_| TableWatch::default()).collect();
        DeviceWatch { table_names, tables }
    }

    /// Every table's devices and clock, as checkpoint data.
    pub(crate) fn save(&self) -> DevicesSnapshot {
        let tables = self
            .tables
            .iter()
            .map(|w| TableDevicesSnapshot {
                districts: w.districts.names.clone(),
                devices: w
                    .last_seen
                    .iter()
                    .map(|(device, (district, ts))| (device.clone(), *district, *ts))
                    .collect(),
                clock: w.clock,
                row_max: w.row_max,
                next_evaluation: w.next_evaluation,
            })
            .collect();
        DevicesSnapshot { tables }
    }

    /// Takes back a checkpoint's devices (tables by position; extra ones are ignored).
    pub(crate) fn restore(&mut self, snapshot: DevicesSnapshot) {
        for (watch, saved) in self.tables.iter_mut().zip(snapshot.tables) {
            let mut districts = Districts::default();
            for name in &saved.districts {
                districts.number(name);
            }
            watch.districts = districts;
            watch.last_seen = saved.devices.into_iter().map(|(d, n, ts)| (d, (n, ts))).collect();
            watch.clock = saved.clock;
            watch.row_max = saved.row_max;
            watch.next_evaluation = saved.next_evaluation;
        }
    }

    /// Devices watched now, over every table.
    pub(crate) fn watched(&self) -> usize {
        self.tables.iter().map(|t| t.last_seen.len()).sum()
    }

    /// Takes a batch's rows in order; returns the snapshots that became due.
    pub(crate) fn observe(&mut self, input: &TableBatch) -> Result<Vec<Snapshot>, ArrowError> {
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
            let hinted = watch
                .last_seen
                .get_index(watch.hint)
                .is_some_and(|(known, _)| known.as_str() == device);
            let index = if hinted {
                Some(watch.hint)
            } else {
                watch.last_seen.get_index_of(device)
            };
            match index.and_then(|i| watch.last_seen.get_index_mut(i).map(|(_, seen)| (i, seen))) {
                Some((index, seen)) => {
                    watch.hint = index + 1;
                    if watch.districts.name(seen.0) != district {
                        seen.0 = watch.districts.number(district);
                    }
                    seen.1 = seen.1.max(t);
                }
                None => {
                    let number = watch.districts.number(district);
                    watch.last_seen.insert(device.to_string(), (number, t));
                    watch.hint = watch.last_seen.len();
                }
            }
            watch.row_max = watch.row_max.max(Some(t));
        }
        Ok(due)
    }

    /// A silent table: event time advances with the clock since its last row.
    pub(crate) fn idle(
        &mut self,
        table: usize,
        now_ms: EpochMs,
        last_arrival_ms: EpochMs,
    ) -> Result<Option<Snapshot>, ArrowError> {
        let Some(base) = self.tables.get(table).and_then(|w| w.row_max) else {
            return Ok(None);
        };
        self.advance(table, idle_event_ms(base, now_ms, last_arrival_ms), None)
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
        let watch = &self.tables[table];
        let rows: Vec<(&str, &str, &str, EpochMs)> = watch
            .last_seen
            .iter()
            .map(|(device, (district, seen))| (name, device.as_str(), watch.districts.name(*district), *seen))
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    /// A batch of one table's rows: (ts, device, district).
    fn rows(rows: &[(EpochMs, &str, &str)]) -> TableBatch {
        let schema = Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("device_id", DataType::Utf8, false),
            Field::new("district", DataType::Utf8, false),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
        ];
        TableBatch {
            table: 0,
            batch: RecordBatch::try_new(Arc::new(schema), columns).expect("valid batch"),
            arrivals_ns: vec![0; rows.len()],
            at_ms: vec![0; rows.len()],
            topics: StringArray::from_iter_values(rows.iter().map(|_| "t")),
            first_seq: 0,
            rebuild: false,
            late: Default::default(),
            distinct: Default::default(),
            ts_range: Default::default(),
        }
    }

    /// (device, district, last seen) of a snapshot.
    fn seen(snapshot: &Snapshot) -> Vec<(String, String, EpochMs)> {
        let b = &snapshot.batch;
        let devices = b.column(1).as_string::<i32>();
        let districts = b.column(2).as_string::<i32>();
        let last = b.column(3).as_primitive::<TimestampMillisecondType>();
        (0..b.num_rows())
            .map(|r| {
                (
                    devices.value(r).to_string(),
                    districts.value(r).to_string(),
                    last.value(r),
                )
            })
            .collect()
    }

    #[test]
    fn devices_keep_their_latest_district_in_first_seen_order() {
        let mut watch = DeviceWatch::new(vec!["heating".to_string()]);
        assert!(
            watch
                .observe(&rows(&[
                    (1_000, "hs-2", "east"),
                    (2_000, "hs-1", "east"),
                    (3_000, "hs-3", "west")
                ]))
                .expect("observed")
                .is_empty()
        );
        // hs-2 moves west; the next minute's first row cuts the snapshot before it counts.
        let due = watch
            .observe(&rows(&[(30_000, "hs-2", "west"), (61_000, "hs-1", "north")]))
            .expect("observed");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].at_ms, 60_000);
        assert_eq!(
            seen(&due[0]),
            vec![
                ("hs-2".to_string(), "west".to_string(), 30_000),
                ("hs-1".to_string(), "east".to_string(), 2_000),
                ("hs-3".to_string(), "west".to_string(), 3_000),
            ]
        );
        let due = watch.observe(&rows(&[(121_000, "hs-3", "west")])).expect("observed");
        assert_eq!(seen(&due[0])[1], ("hs-1".to_string(), "north".to_string(), 61_000));
        assert_eq!(watch.watched(), 3);
    }

    #[test]
    fn a_device_is_found_whether_or_not_it_comes_in_the_order_of_the_minute_before() {
        let mut watch = DeviceWatch::new(vec!["water".to_string()]);
        let first: Vec<(EpochMs, &str, &str)> = (0..5)
            .map(|n| (1_000 + n, ["w0", "w1", "w2", "w3", "w4"][n as usize], "east"))
            .collect();
        watch.observe(&rows(&first)).expect("observed");
        // The same order (every lookup at its hint), then another (each misses), a device
        // twice in a row (its hint is the one after it) and a new one between known ones.
        let second = [
            (61_000, "w0", "east"),
            (61_001, "w1", "east"),
            (61_002, "w2", "east"),
            (61_003, "w3", "east"),
            (61_004, "w4", "east"),
        ];
        let third = [
            (121_000, "w4", "east"),
            (121_001, "w2", "west"),
            (121_002, "w2", "west"),
            (121_003, "w9", "east"),
            (121_004, "w0", "east"),
        ];
        assert_eq!(watch.observe(&rows(&second)).expect("observed").len(), 1);
        let due = watch.observe(&rows(&third)).expect("observed");
        assert_eq!(due.len(), 1);
        assert_eq!(
            seen(&due[0])
                .iter()
                .map(|(d, _, t)| (d.as_str(), *t))
                .collect::<Vec<_>>(),
            [
                ("w0", 61_000),
                ("w1", 61_001),
                ("w2", 61_002),
                ("w3", 61_003),
                ("w4", 61_004)
            ]
        );
        let due = watch.observe(&rows(&[(181_000, "w1", "east")])).expect("observed");
        assert_eq!(
            seen(&due[0]),
            [
                ("w0".to_string(), "east".to_string(), 121_004),
                ("w1".to_string(), "east".to_string(), 61_001),
                ("w2".to_string(), "west".to_string(), 121_002),
                ("w3".to_string(), "east".to_string(), 61_003),
                ("w4".to_string(), "east".to_string(), 121_000),
                ("w9".to_string(), "east".to_string(), 121_003),
            ]
        );
        assert_eq!(watch.watched(), 6);
    }
}
