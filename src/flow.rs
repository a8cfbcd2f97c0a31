//! The vocabulary of the pipeline: the typed messages its stages hand each other, and
//! nothing else. Sources produce [`Message`]s, wrapped with control items in [`Ingest`] on
//! the decode queues (a file replay hands over fixture lines in place, [`LineBurst`]s,
//! which decode workers read as [`Received`] views, as they read messages); decode workers
//! flush [`TableBatch`]es and send [`TableEvent`]s to the rule queues named by the
//! [`RuleFanout`]; anything unusable becomes a [`DeadLetter`] with its [`Reason`]. This
//! module imports only `time` and external crates, so every stage can depend on it and it
//! depends on no stage.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, StringArray};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::time::EpochMs;

// ---- What a source hands to the pipeline ----

/// One message as it arrived, before decoding.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Virtual arrival time: the fixture's `at` in replay, the wall clock (epoch ms) live.
    pub at_ms: i64,
    pub topic: String,
    /// The payload bytes exactly as received (JSON text when valid). Shared, not copied:
    /// a slice of the fixture's read buffer or of the MQTT client's receive buffer.
    pub payload: bytes::Bytes,
    /// A recorded payload that was not JSON (`"raw"` in a fixture): always dead-lettered.
    pub recorded_invalid: bool,
    /// Wall-clock arrival, nanoseconds since the pipeline's start (for latency).
    pub arrived_ns: u64,
    /// Wall clock (epoch ms) when the source received it, the "now" that readings too far
    /// ahead are judged against; 0 = when it is decoded.
    pub received_ms: i64,
    /// Position in the write-ahead log (0 when the run keeps no state).
    pub seq: u64,
    /// Recovery is feeding this message again only to refill open windows: it is decoded
    /// and routed to those windows, and nothing else happens (no counts, no dead letters,
    /// no judgement).
    pub rebuild: bool,
}

impl Message {
    /// The message as the decoder reads it.
    pub fn received(&self) -> Received<'_> {
        Received {
            at_ms: self.at_ms,
            topic: &self.topic,
            payload: &self.payload,
            recorded_invalid: self.recorded_invalid,
            arrived_ns: self.arrived_ns,
            received_ms: self.received_ms,
            seq: self.seq,
            rebuild: self.rebuild,
            cut_from: None,
        }
    }
}

/// A message as the decoder reads it, borrowed: from a [`Message`], or from a block of
/// fixture lines ([`LineBurst`]) without a handle or a copy per line. The fields mean what
/// [`Message`]'s do.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub at_ms: i64,
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub recorded_invalid: bool,
    pub arrived_ns: u64,
    pub received_ms: i64,
    pub seq: u64,
    pub rebuild: bool,
    /// The fixture line it was cut from, when its payload is a cut the decoder must check
    /// (`envelope::cut`); `None` for a payload known to be the message's.
    pub cut_from: Option<CutLine<'a>>,
}

/// The fixture line a payload was cut from: what the decoder needs to read it again.
#[derive(Debug, Clone, Copy)]
pub struct CutLine<'a> {
    /// The block the line lies in, and where its cut payload lies in the block: the line
    /// itself is only looked for when the decoder reads it again (`text`), which is rare.
    pub block: &'a [u8],
    pub payload: (usize, usize),
    /// Its number in the file (from 1) and the file's name, for a dead letter's detail.
    pub line_no: u64,
    pub source: &'a str,
}

/// Fixture lines a file replay read for one decode worker, in file order: one shared
/// block of the file and where each line's parts lie in it. A replay at full speed hands
/// over millions of lines a second; a `Message` each would cost the reader an allocation
/// (the topic) and a shared reference count (the payload's slice) per line, counts the
/// decode workers, dropping them, keep pulling back across cores.
#[derive(Debug)]
pub(crate) struct LineBurst {
    pub block: bytes::Bytes,
    /// The name of the file the block was read from.
    pub source: Arc<str>,
    pub lines: Vec<LineAt>,
}

/// A block of whole lines of a fixture file, and the file's name.
#[derive(Debug, Clone)]
pub(crate) struct LineBlock {
    pub bytes: bytes::Bytes,
    pub source: Arc<str>,
}

/// One fixture line of a [`LineBurst`]: its envelope's time, when it was handed over, and
/// its topic and payload as byte ranges of the block (the topic checked to be UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineAt {
    pub at_ms: i64,
    pub arrived_ns: u64,
    pub topic: (usize, usize),
    pub payload: (usize, usize),
    /// The line's number in the file, from 1.
    pub line_no: u64,
    /// Whether the payload was cut, not scanned (`envelope::cut`): only the decoder, which
    /// checks it, may take such a line (`Downstream::takes_cut_lines`).
    pub cut: bool,
}

impl LineAt {
    /// The line as a message of its own (its payload a slice of `block`).
    pub(crate) fn message_in(&self, block: &bytes::Bytes) -> Message {
        Message {
            at_ms: self.at_ms,
            topic: String::from_utf8_lossy(&block[self.topic.0..self.topic.1]).into_owned(),
            payload: block.slice(self.payload.0..self.payload.1),
            arrived_ns: self.arrived_ns,
            ..Message::default()
        }
    }

    /// Its topic in `block`; empty where it is not UTF-8 (never, from the reader, which
    /// scanned it as text): dead-lettered as an unknown topic.
    pub(crate) fn topic_in<'b>(&self, block: &'b [u8]) -> &'b str {
        std::str::from_utf8(&block[self.topic.0..self.topic.1]).unwrap_or("")
    }
}

impl LineBurst {
    /// Each line as the decoder reads it.
    pub(crate) fn received(&self) -> impl Iterator<Item = Received<'_>> {
        self.lines.iter().map(|line| Received {
            at_ms: line.at_ms,
            topic: line.topic_in(&self.block),
            payload: &self.block[line.payload.0..line.payload.1],
            recorded_invalid: false,
            arrived_ns: line.arrived_ns,
            received_ms: 0,
            seq: 0,
            rebuild: false,
            cut_from: line.cut.then(|| CutLine {
                block: &self.block,
                payload: line.payload,
                line_no: line.line_no,
                source: &self.source,
            }),
        })
    }
}

impl<'a> CutLine<'a> {
    /// The whole line (trimmed): the bytes around the payload up to the newlines either side.
    pub fn text(&self) -> &'a [u8] {
        let (from, to) = self.payload;
        let start = memchr::memrchr(b'\n', &self.block[..from]).map_or(0, |newline| newline + 1);
        let end = memchr::memchr(b'\n', &self.block[to..]).map_or(self.block.len(), |newline| to + newline);
        self.block[start..end].trim_ascii()
    }
}

/// What travels through the decode queues, in order.
#[derive(Debug)]
pub(crate) enum Ingest {
    Message(Message),
    /// Messages a source read together for the same worker, in arrival order: one queue
    /// operation and at most one wake-up for the lot (see `queue::Bursts`).
    Messages(Vec<Message>),
    /// Fixture lines a file replay read for this worker, in file order.
    Lines(LineBurst),
    /// The virtual clock reached `now_ms`; lets idle tables advance their watermark.
    Tick {
        now_ms: i64,
    },
    /// A new fan-out after a rule reload: rows before this point go to the old one.
    Reroute(Arc<RuleFanout>),
    /// A checkpoint's cut: every message up to the log position `covers_seq` came before.
    Barrier(Cut),
    /// The source is exhausted; flush everything.
    End,
}

/// A checkpoint's cut as it travels the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    /// The checkpoint's number.
    pub checkpoint: u64,
    /// The last log position before the cut.
    pub covers_seq: u64,
    /// Messages logged up to the cut, over the state directory's life (where a replayed
    /// fixture resumes).
    pub messages: u64,
    /// A cluster partition's stream clock: the next whole second its feed ticks at (`None`
    /// elsewhere: the write-ahead log holds the ticks themselves).
    pub next_tick_ms: Option<i64>,
}

/// The decode queues closed: every decode worker has gone (only at shutdown or after a
/// crash). Whoever hands items over stops.
#[derive(Debug, thiserror::Error)]
#[error("the decode workers have stopped")]
pub struct Closed;

// ---- What the rule stage receives ----

/// A flushed batch of one table, shared by every rule that reads the table.
#[derive(Debug)]
pub struct TableBatch {
    /// Position of the table in the catalog.
    pub table: usize,
    pub batch: RecordBatch,
    /// Wall-clock arrival of each row (ns since pipeline start), for detection latency.
    pub arrivals_ns: Vec<u64>,
    /// Virtual arrival time of each row (ms), for idle detection and dead letters.
    pub at_ms: Vec<EpochMs>,
    /// Topic of each row's message, for dead letters.
    pub topics: StringArray,
    /// Log position of the first message with rows here (0 when the run keeps no state).
    pub first_seq: u64,
    /// Rows fed again by recovery to refill open windows (see `Message::rebuild`).
    pub rebuild: bool,
    /// The rows rules found late, dead-lettered once each when the batch is dropped.
    pub late: LateRows,
    /// The distinct values of the text columns rules gate on, worked out once per batch.
    pub distinct: DistinctText,
    /// The least and greatest `ts` of the rows (`None` without rows), worked out when a
    /// rule first asks: every rule of the table needs them for every batch.
    pub ts_range: std::sync::OnceLock<Option<(EpochMs, EpochMs)>>,
}

impl TableBatch {
    /// The least and greatest `ts` of the rows; `None` when there are none.
    pub fn ts_range(&self) -> Option<(EpochMs, EpochMs)> {
        *self.ts_range.get_or_init(|| {
            let ts = self.batch.column(0).as_primitive_opt::<TimestampMillisecondType>()?;
            Some((
                datafusion::arrow::compute::min(ts)?,
                datafusion::arrow::compute::max(ts)?,
            ))
        })
    }
}

/// The distinct values of some text columns of one batch, each worked out when a rule first
/// asks: many rules test the same column (`kind = 'room'`, `road_class IN (…)`) against the
/// same batch, and a rule whose values the batch lacks can skip its WHERE clause.
#[derive(Debug, Default)]
pub struct DistinctText {
    /// Per column asked for: its values, or `None` when it is not a text column.
    columns: std::sync::Mutex<Vec<(usize, Option<TextValues>)>>,
}

/// The distinct values of one text column.
pub(crate) type TextValues = Arc<std::collections::HashSet<String>>;

impl DistinctText {
    /// The distinct non-null values of text column `column` of `batch`; `None` when it is
    /// not a text column.
    pub(crate) fn of(&self, batch: &RecordBatch, column: usize) -> Option<TextValues> {
        let mut columns = self.columns.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, values)) = columns.iter().find(|(c, _)| *c == column) {
            return values.clone();
        }
        let values = batch
            .columns()
            .get(column)
            .and_then(|array| array.as_any().downcast_ref::<StringArray>())
            .map(|text| {
                // Rows of a kind come in runs: only a change of value is looked up.
                let mut distinct = std::collections::HashSet::new();
                let mut last: Option<&str> = None;
                for value in text.iter().flatten() {
                    if last != Some(value) {
                        distinct.insert(value.to_string());
                        last = Some(value);
                    }
                }
                Arc::new(distinct)
            });
        columns.push((column, values.clone()));
        values
    }
}

impl Drop for TableBatch {
    /// The last rule let go of the batch: its late rows are dead-lettered, once each.
    fn drop(&mut self) {
        let rows = self.late.take();
        if let (false, Some(out)) = (rows.is_empty(), self.late.out.take()) {
            out.dead_letter(self, rows);
        }
    }
}

/// Where a batch's late rows go once every rule has let go of the batch.
pub trait LateRowsOut: Send + Sync {
    /// `rows`: each late row's position with the rules it was late for, in row order.
    fn dead_letter(&self, batch: &TableBatch, rows: Vec<(u32, Vec<String>)>);
}

/// The rows of one batch that rules found late. Each rule reading the batch marks its own;
/// the batch's drop hands them on grouped by row, so a row late for six rules is one dead
/// letter naming the six (the per-rule counts are kept by the rules).
#[derive(Default)]
pub struct LateRows {
    marked: std::sync::Mutex<Vec<(u32, String)>>,
    out: Option<Arc<dyn LateRowsOut>>,
}

impl LateRows {
    pub fn new(out: Arc<dyn LateRowsOut>) -> Self {
        LateRows {
            marked: std::sync::Mutex::new(Vec::new()),
            out: Some(out),
        }
    }

    /// `rows` (positions in the batch) were late for `rule`.
    pub fn mark(&self, rows: &[u32], rule: &str) {
        let mut marked = self.marked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        marked.extend(rows.iter().map(|&row| (row, rule.to_string())));
    }

    /// The marked rows, each with its rules (sorted), in row order.
    fn take(&mut self) -> Vec<(u32, Vec<String>)> {
        let marked = self.marked.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut marked = std::mem::take(marked);
        marked.sort();
        let mut rows: Vec<(u32, Vec<String>)> = Vec::new();
        for (row, rule) in marked {
            match rows.last_mut() {
                Some((last, rules)) if *last == row => rules.push(rule),
                _ => rows.push((row, vec![rule])),
            }
        }
        rows
    }
}

impl std::fmt::Debug for LateRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateRows")
            .field("out", &self.out.is_some())
            .finish_non_exhaustive()
    }
}

/// What the rule stage receives for a table, in arrival order.
#[derive(Debug, Clone)]
pub(crate) enum TableEvent {
    Batch(Arc<TableBatch>),
    /// No row arrived for `idle_timeout`: at virtual time `now_ms`, the last row had arrived
    /// at `last_arrival_ms`. Every row of the table received so far was sent before this.
    Idle {
        table: usize,
        now_ms: EpochMs,
        last_arrival_ms: EpochMs,
        arrived_ns: u64,
    },
    /// A checkpoint's cut: every row of `table` before it was sent before this. A rule
    /// takes its snapshot once the cut came from every table it reads; `rules` are the ids
    /// of every rule the cut reaches (the checkpoint waits for all of them).
    Barrier {
        cut: Cut,
        table: usize,
        /// When the table's last row arrived (virtual ms), for idle advance after recovery.
        last_arrival_ms: Option<EpochMs>,
        rules: Arc<[String]>,
    },
    /// The source is exhausted.
    End {
        arrived_ns: u64,
    },
}

/// Per table, the queues of the rule units reading it. Decode workers hold their tables' part; a
/// reload hands them a new fan-out in-band (`Ingest::Reroute`), so the switch from a rule's
/// old version to its new one falls at one exact point of each table's stream.
#[derive(Debug, Clone)]
pub(crate) struct RuleFanout {
    by_table: Vec<Vec<mpsc::Sender<TableEvent>>>,
    /// The id of every rule with a queue here.
    rules: Arc<[String]>,
}

impl RuleFanout {
    pub(crate) fn new(tables: usize) -> Self {
        RuleFanout {
            by_table: vec![Vec::new(); tables],
            rules: Arc::from(Vec::new()),
        }
    }

    /// Adds the queue of a unit (`rules`: one rule, or a window family) to the tables it
    /// reads.
    pub(crate) fn add(&mut self, rules: &[&str], tables: &[usize], queue: &mpsc::Sender<TableEvent>) {
        for &table in tables {
            if let Some(queues) = self.by_table.get_mut(table) {
                queues.push(queue.clone());
            }
        }
        // A rule that reads no table gets no cut, so a checkpoint must not wait for it.
        if !tables.is_empty() {
            let mut all = self.rules.to_vec();
            all.extend(rules.iter().map(|r| r.to_string()));
            self.rules = Arc::from(all);
        }
    }

    /// The ids of every rule with a queue here.
    pub(crate) fn rules(&self) -> Arc<[String]> {
        Arc::clone(&self.rules)
    }

    /// The part a decode worker needs: the queues of its own tables, nothing for the others.
    pub(crate) fn for_tables(&self, tables: &[usize]) -> Vec<Vec<mpsc::Sender<TableEvent>>> {
        self.by_table
            .iter()
            .enumerate()
            .map(|(t, queues)| {
                if tables.contains(&t) {
                    queues.clone()
                } else {
                    Vec::new()
                }
            })
            .collect()
    }
}

// ---- What the pipeline will not use ----

/// Why a row was not used. The string forms are part of the contract (file, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The payload is not JSON.
    MalformedJson,
    /// The payload, or an element of a payload array, is not a JSON object.
    NotAnObject,
    /// The row has no `ts`.
    MissingTs,
    /// `ts` is neither epoch milliseconds nor a date-time text.
    BadTs,
    /// `ts` is before 2000 or too far ahead of the clock.
    TsOutOfRange,
    /// A column holds a value of the wrong type (e.g. text in a number column).
    WrongType,
    /// The topic does not match the pattern or names no known table.
    UnknownTopic,
    /// The payload exceeds `engine.max_payload_bytes`.
    Oversized,
    /// Neither the payload nor the topic names the device.
    MissingDeviceId,
    /// Every window the row belongs to had already closed (per rule).
    Late,
}

impl Reason {
    /// Every reason, in a stable order for reports.
    pub const ALL: [Reason; 10] = [
        Reason::MalformedJson,
        Reason::NotAnObject,
        Reason::MissingTs,
        Reason::BadTs,
        Reason::TsOutOfRange,
        Reason::WrongType,
        Reason::UnknownTopic,
        Reason::Oversized,
        Reason::MissingDeviceId,
        Reason::Late,
    ];

    /// The snake_case name used in files and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingTs => "missing_ts",
            Reason::BadTs => "bad_ts",
            Reason::TsOutOfRange => "ts_out_of_range",
            Reason::WrongType => "wrong_type",
            Reason::UnknownTopic => "unknown_topic",
            Reason::Oversized => "oversized",
            Reason::MissingDeviceId => "missing_device_id",
            Reason::Late => "late",
        }
    }

    /// Position in [`Reason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One rejected row (or whole message, when it could not be split into rows).
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub reason: Reason,
    /// What exactly was wrong, for a person.
    pub detail: String,
    pub topic: String,
    /// Virtual arrival time of the message.
    pub at: i64,
    /// The rules for which the row was late; absent for decode rejections.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// The row (or the payload text when it was not JSON, truncated when oversized).
    pub payload: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    fn batch_at(ts: Vec<EpochMs>) -> TableBatch {
        let schema = Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )]);
        let rows = ts.len();
        TableBatch {
            table: 0,
            batch: RecordBatch::try_new(Arc::new(schema), vec![Arc::new(TimestampMillisecondArray::from(ts))])
                .expect("a batch"),
            arrivals_ns: vec![0; rows],
            at_ms: vec![0; rows],
            topics: StringArray::from(vec!["t"; rows]),
            first_seq: 0,
            rebuild: false,
            late: LateRows::default(),
            distinct: Default::default(),
            ts_range: Default::default(),
        }
    }

    #[test]
    fn a_batch_knows_its_least_and_greatest_ts_and_an_empty_one_has_none() {
        let batch = batch_at(vec![3_000, 1_000, 2_000]);
        assert_eq!(batch.ts_range(), Some((1_000, 3_000)));
        assert_eq!(batch.ts_range(), Some((1_000, 3_000)), "asked again, the same");
        assert_eq!(batch_at(Vec::new()).ts_range(), None);
    }
}
