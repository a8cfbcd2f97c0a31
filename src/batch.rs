//! Rows → Arrow `RecordBatch`, one builder per table (hot path: columnar appends, no per-row
//! allocation beyond Arrow's amortised buffers). A batch is flushed when it is full or its
//! first row has lingered long enough; a flush yields a `flow::TableBatch`. The row contract
//! decoders fill (`Row`, `Cell`, `RowSink`) lives here, beside its consumer.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Float64Builder, StringBuilder, TimestampMillisecondBuilder};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use crate::flow::{LateRows, Received, TableBatch};
use crate::schema::{ColumnType, TableDef, UTC};
use crate::time::EpochMs;

/// One column value of a decoded row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Null,
    Float(f64),
    Text(Cow<'a, str>),
}

/// A decoded row, borrowed from the payload; `cells` follow the table's `columns`.
#[derive(Debug)]
pub struct Row<'a> {
    pub ts: EpochMs,
    pub device_id: &'a str,
    pub district: &'a str,
    pub cells: &'a [Cell<'a>],
}

/// Where decoded rows go (the batcher).
pub trait RowSink {
    fn push(&mut self, table: usize, row: &Row<'_>, msg: &Received<'_>);
}

enum ColumnBuilder {
    Float(Float64Builder),
    Text(StringBuilder),
}

/// Accumulates the rows of one table.
pub struct TableBatcher {
    table: usize,
    def: Arc<TableDef>,
    ts: TimestampMillisecondBuilder,
    device_id: StringBuilder,
    district: StringBuilder,
    columns: Vec<ColumnBuilder>,
    arrivals_ns: Vec<u64>,
    at_ms: Vec<EpochMs>,
    topics: StringBuilder,
    /// When the oldest row of the current batch was appended (for the linger deadline).
    started: Option<Instant>,
    /// The most rows a batch holds (`batch_rows`).
    capacity: usize,
    /// Log position of the current batch's first message.
    first_seq: u64,
    /// Whether the current batch refills windows in recovery (its rows all do).
    rebuild: bool,
}

/// The least room a fresh batch starts with.
const MIN_ROOM: usize = 16;

impl TableBatcher {
    pub fn new(table: usize, def: Arc<TableDef>, capacity: usize) -> Self {
        let columns = def
            .columns
            .iter()
            .map(|c| match c.kind {
                ColumnType::Float => ColumnBuilder::Float(Float64Builder::with_capacity(capacity)),
                ColumnType::String => ColumnBuilder::Text(StringBuilder::with_capacity(capacity, capacity * 8)),
            })
            .collect();
        TableBatcher {
            table,
            def,
            ts: TimestampMillisecondBuilder::with_capacity(capacity).with_timezone(UTC),
            device_id: StringBuilder::with_capacity(capacity, capacity * 8),
            district: StringBuilder::with_capacity(capacity, capacity * 8),
            columns,
            arrivals_ns: Vec::with_capacity(capacity),
            at_ms: Vec::with_capacity(capacity),
            topics: StringBuilder::with_capacity(capacity, capacity * 32),
            started: None,
            capacity,
            first_seq: 0,
            rebuild: false,
        }
    }

    /// Rows waiting in this batch.
    pub fn len(&self) -> usize {
        self.arrivals_ns.len()
    }

    /// Whether no rows are waiting.
    pub fn is_empty(&self) -> bool {
        self.arrivals_ns.is_empty()
    }

    /// When the oldest waiting row arrived.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Appends one decoded row.
    pub fn push(&mut self, row: &Row<'_>, msg: &Received<'_>) {
        self.ts.append_value(row.ts);
        self.device_id.append_value(row.device_id);
        self.district.append_value(row.district);
        for (builder, cell) in self.columns.iter_mut().zip(row.cells) {
            match (builder, cell) {
                (ColumnBuilder::Float(b), Cell::Float(f)) => b.append_value(*f),
                (ColumnBuilder::Text(b), Cell::Text(t)) => b.append_value(t),
                (ColumnBuilder::Float(b), _) => b.append_null(),
                (ColumnBuilder::Text(b), _) => b.append_null(),
            }
        }
        if self.started.is_none() {
            self.started = Some(Instant::now());
            self.first_seq = msg.seq;
            self.rebuild = msg.rebuild;
        }
        self.arrivals_ns.push(msg.arrived_ns);
        self.at_ms.push(msg.at_ms);
        self.topics.append_value(msg.topic);
    }

    /// Finishes the waiting rows into a batch. The builders start again with room for as
    /// many rows as this batch had (a power of two, up to the batch size), so a steady
    /// stream fills them without regrowing them row by row.
    pub fn flush(&mut self) -> Result<TableBatch, ArrowError> {
        let rows = self.len();
        let room = rows.next_power_of_two().clamp(MIN_ROOM, self.capacity.max(MIN_ROOM));
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(3 + self.columns.len());
        let ts = TimestampMillisecondBuilder::with_capacity(room).with_timezone(UTC);
        arrays.push(Arc::new(std::mem::replace(&mut self.ts, ts).finish()));
        arrays.push(Arc::new(renew_text(&mut self.device_id, rows, room).finish()));
        arrays.push(Arc::new(renew_text(&mut self.district, rows, room).finish()));
        for builder in &mut self.columns {
            arrays.push(match builder {
                ColumnBuilder::Float(b) => Arc::new(std::mem::replace(b, Float64Builder::with_capacity(room)).finish()),
                ColumnBuilder::Text(b) => Arc::new(renew_text(b, rows, room).finish()),
            });
        }
        self.started = None;
        Ok(TableBatch {
            table: self.table,
            batch: RecordBatch::try_new(Arc::clone(&self.def.schema), arrays)?,
            arrivals_ns: std::mem::replace(&mut self.arrivals_ns, Vec::with_capacity(room)),
            at_ms: std::mem::replace(&mut self.at_ms, Vec::with_capacity(room)),
            topics: renew_text(&mut self.topics, rows, room).finish(),
            first_seq: self.first_seq,
            rebuild: self.rebuild,
            late: LateRows::default(),
            distinct: Default::default(),
            ts_range: Default::default(),
        })
    }
}

/// Swaps in an empty string builder with room for `room` values as long, on average, as the
/// `rows` values the old one holds; returns the old one.
fn renew_text(builder: &mut StringBuilder, rows: usize, room: usize) -> StringBuilder {
    let bytes_per_value = builder.values_slice().len().div_ceil(rows.max(1)).max(1);
    std::mem::replace(builder, StringBuilder::with_capacity(room, room * bytes_per_value))
}

/// The batchers of the tables one decode worker owns, indexed by table id.
pub struct Batchers {
    pub by_table: Vec<Option<TableBatcher>>,
    /// The table the latest row went to.
    pub last_table: Option<usize>,
}

impl RowSink for Batchers {
    fn push(&mut self, table: usize, row: &Row<'_>, msg: &Received<'_>) {
        if let Some(Some(batcher)) = self.by_table.get_mut(table) {
            batcher.push(row, msg);
            self.last_table = Some(table);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Catalog;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float64Type;

    #[test]
    fn rows_become_a_batch_with_the_table_schema() {
        let catalog = Catalog::builtin();
        let water = catalog.get("water").cloned().expect("water table");
        let mut batcher = TableBatcher::new(3, Arc::clone(&water), 4);
        let msg = crate::flow::Message {
            at_ms: 7,
            topic: "city/a/water/w1".into(),
            payload: bytes::Bytes::new(),
            recorded_invalid: false,
            arrived_ns: 99,
            ..crate::flow::Message::default()
        };
        let cells = [
            Cell::Text("pressure".into()),
            Cell::Float(0.3),
            Cell::Null,
            Cell::Null,
            Cell::Null,
            Cell::Null,
        ];
        let row = |ts, device_id, district| Row {
            ts,
            device_id,
            district,
            cells: &cells,
        };
        batcher.push(&row(1000, "w1", "a"), &msg.received());
        batcher.push(&row(2000, "w1", "a"), &msg.received());
        let flushed = batcher.flush().expect("valid batch");
        assert_eq!(flushed.batch.num_rows(), 2);
        assert_eq!(flushed.batch.schema(), water.schema);
        assert_eq!(flushed.arrivals_ns, [99, 99]);
        let pressure = flushed.batch.column(4).as_primitive::<Float64Type>();
        assert_eq!((pressure.value(1), flushed.batch.column(5).null_count()), (0.3, 2));
        assert!(batcher.is_empty());
        assert_eq!(batcher.flush().expect("empty batch").batch.num_rows(), 0);
        // The renewed builders take the next batch as the first ones did.
        batcher.push(&row(3000, "w2", "b"), &msg.received());
        let next = batcher.flush().expect("valid batch");
        assert_eq!(next.batch.num_rows(), 1);
        assert_eq!(next.batch.column(1).as_string::<i32>().value(0), "w2");
        assert_eq!(next.topics.value(0), "city/a/water/w1");
    }
}
