//! Payload + topic → typed rows (hot path). A payload is one JSON object or an array of
//! them; ThingsBoard-style `{"ts": …, "values": {…}}` objects are flattened. `ts` is epoch
//! milliseconds or date-time text; `district`/`device_id` come from the topic when absent.
//! Every rejected row becomes a `DeadLetter` with its reason; nothing here panics, logs or
//! counts per row (callers count per message from the returned `Outcome`).
//!
//! Two paths, one set of rules: a payload whose rows are all good is decoded by the borrowed
//! scan of `scan` (no JSON tree); any other payload is parsed whole into a `serde_json::Value`,
//! which keeps each bad row for its dead letter. Both read fields through the same
//! `Scalar` conversions, so they accept and reject alike.
//!
//! A payload a file replay cut from its line unchecked (`envelope::cut`) is checked here,
//! where it is parsed anyway: taken once a path reads it whole as one JSON value, and
//! otherwise the line is read again as the reader reads an uncut one (`decode_line`).

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use smallvec::SmallVec;

use super::fixture::{FixtureError, LineParts, bad_line_letter, read_line};
use super::scan::{FieldIndex, INLINE_SLOTS, Scalar, Scanned, scalar_of, scan};
use crate::batch::{Cell, Row, RowSink};
use crate::flow::{CutLine, DeadLetter, Message, Reason, Received};
use crate::schema::{Catalog, ColumnType, TableDef};
use crate::time::{EpochMs, parse_ts_text};
use crate::topic::TopicPattern;

/// 2000-01-01T00:00:00Z: anything earlier is a broken clock, not a reading.
const MIN_TS_MS: EpochMs = 946_684_800_000;
/// How much of a rejected payload's text is kept in the dead-letter file.
const KEPT_TEXT_BYTES: usize = 4096;

/// Rows accepted and rejected from one message. A message rejected as a whole (not JSON,
/// unknown topic, oversized) counts as one rejected row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: u64,
    pub rejected: u64,
}

/// Decodes messages for one deployment's tables and topic convention.
#[derive(Debug, Clone)]
pub struct Decoder {
    tables: Vec<Arc<TableDef>>,
    /// The fields each table reads from a payload, for the scan.
    fields: Vec<FieldIndex>,
    catalog: Catalog,
    pattern: TopicPattern,
    max_payload_bytes: usize,
    max_future_ms: i64,
}

impl Decoder {
    pub fn new(catalog: Catalog, pattern: TopicPattern, max_payload_bytes: usize, max_future_ms: i64) -> Self {
        let fields = catalog
            .tables()
            .iter()
            .map(|t| FieldIndex::new(t.columns.iter().map(|c| c.name.as_str())))
            .collect();
        Decoder {
            fields,
            tables: catalog.tables().to_vec(),
            catalog,
            pattern,
            max_payload_bytes,
            max_future_ms,
        }
    }

    /// Decodes one message: accepted rows go to `sink`, rejected ones to `reject`.
    /// `now_ms` is the wall clock used to spot timestamps from the far future.
    pub fn decode(
        &self,
        msg: &Message,
        now_ms: EpochMs,
        sink: &mut impl RowSink,
        reject: &mut impl FnMut(DeadLetter),
    ) -> Outcome {
        self.decode_received(&msg.received(), now_ms, sink, reject)
    }

    /// `decode`, for a message read in place (from a `Message` or a block of fixture lines).
    /// A payload cut from a fixture line (`Received::cut_from`) is decoded as it is once the
    /// scan or the parser has read it whole, one JSON value; otherwise, before anything is
    /// accepted or rejected, the line is read again as the reader reads an uncut line.
    pub(crate) fn decode_received(
        &self,
        msg: &Received<'_>,
        now_ms: EpochMs,
        sink: &mut impl RowSink,
        reject: &mut impl FnMut(DeadLetter),
    ) -> Outcome {
        if let Some(outcome) = self.decode_payload(msg, now_ms, sink, reject) {
            return outcome;
        }
        match msg.cut_from {
            Some(line) => self.decode_line(&line, msg, now_ms, sink, reject),
            None => Outcome::default(),
        }
    }

    /// Decodes a message whose payload is known to be its own, or one whose cut proves to
    /// be a whole JSON value; `None` (nothing done) for a cut that is not.
    fn decode_payload(
        &self,
        msg: &Received<'_>,
        now_ms: EpochMs,
        sink: &mut impl RowSink,
        reject: &mut impl FnMut(DeadLetter),
    ) -> Option<Outcome> {
        // A message rejected whole, unless its payload is an unchecked cut: its line may say
        // otherwise (another key after the payload, say), and is read again.
        let whole = |reason: Reason, detail: String| {
            msg.cut_from.is_none().then(|| DeadLetter {
                reason,
                detail,
                topic: msg.topic.to_string(),
                at: msg.at_ms,
                rules: Vec::new(),
                payload: Value::String(kept_text(msg.payload)),
            })
        };
        let rejected_whole = Outcome {
            accepted: 0,
            rejected: 1,
        };
        if msg.payload.len() > self.max_payload_bytes {
            reject(whole(
                Reason::Oversized,
                format!(
                    "payload of {} bytes exceeds the limit of {}",
                    msg.payload.len(),
                    self.max_payload_bytes
                ),
            )?);
            return Some(rejected_whole);
        }
        let Some(parts) = self.pattern.parts(msg.topic) else {
            reject(whole(
                Reason::UnknownTopic,
                "topic does not match the topic pattern".to_string(),
            )?);
            return Some(rejected_whole);
        };
        let Some(table) = self.catalog.index_of(parts.table) else {
            reject(whole(
                Reason::UnknownTopic,
                format!("no table named `{}`", parts.table),
            )?);
            return Some(rejected_whole);
        };
        if msg.recorded_invalid {
            reject(whole(
                Reason::MalformedJson,
                "recorded payload was not JSON".to_string(),
            )?);
            return Some(rejected_whole);
        }
        let ctx = RowContext {
            def: &self.tables[table],
            table,
            topic_district: parts.district,
            topic_device: parts.device_id,
            max_ts: now_ms.saturating_add(self.max_future_ms),
        };
        let fields = &self.fields[table];
        let mut scanned = Scanned::with_width(fields.width());
        if scan(msg.payload, fields, &mut scanned)
            && let Some(outcome) = ctx.push_scanned(&scanned, msg, sink)
        {
            return Some(outcome);
        }
        let value: Value = match serde_json::from_slice(msg.payload) {
            Ok(v) => v,
            Err(e) => {
                reject(whole(Reason::MalformedJson, e.to_string())?);
                return Some(rejected_whole);
            }
        };
        let mut outcome = Outcome::default();
        let mut one = |row: &Value| match ctx.decode_row(row, msg, sink) {
            Ok(()) => outcome.accepted += 1,
            Err((reason, detail)) => {
                outcome.rejected += 1;
                reject(DeadLetter {
                    reason,
                    detail,
                    topic: msg.topic.to_string(),
                    at: msg.at_ms,
                    rules: Vec::new(),
                    payload: row.clone(),
                });
            }
        };
        match &value {
            Value::Array(rows) if !rows.is_empty() => rows.iter().for_each(&mut one),
            other => one(other),
        }
        Some(outcome)
    }

    /// Decodes the fixture line a payload was cut from, read again as the reader reads an
    /// uncut line: its real payload decoded, or the line dead-lettered as unreadable (as the
    /// replay does with a line it cannot read).
    fn decode_line(
        &self,
        line: &CutLine<'_>,
        msg: &Received<'_>,
        now_ms: EpochMs,
        sink: &mut impl RowSink,
        reject: &mut impl FnMut(DeadLetter),
    ) -> Outcome {
        let read = match read_line(line.text()) {
            Ok(read) => read,
            Err(message) => {
                reject(bad_line_letter(&FixtureError::Line {
                    source_name: line.source.to_string(),
                    line: line.line_no,
                    message,
                }));
                return Outcome {
                    accepted: 0,
                    rejected: 1,
                };
            }
        };
        let again = match &read {
            LineParts::Common(envelope) => Received {
                at_ms: envelope.at as i64,
                topic: envelope.topic,
                payload: envelope.payload,
                cut_from: None,
                ..*msg
            },
            LineParts::Parsed {
                at_ms,
                topic,
                payload,
                recorded_invalid,
            } => Received {
                at_ms: *at_ms,
                topic,
                payload,
                recorded_invalid: *recorded_invalid,
                cut_from: None,
                ..*msg
            },
        };
        self.decode_payload(&again, now_ms, sink, reject).unwrap_or_default()
    }
}

/// What a row of one message is decoded against.
struct RowContext<'t> {
    def: &'t TableDef,
    table: usize,
    topic_district: &'t str,
    topic_device: &'t str,
    max_ts: EpochMs,
}

type RowError = (Reason, String);

impl RowContext<'_> {
    fn decode_row(&self, row: &Value, msg: &Received<'_>, sink: &mut impl RowSink) -> Result<(), RowError> {
        let Value::Object(obj) = row else {
            return Err((
                Reason::NotAnObject,
                format!("expected a JSON object, got {}", scalar_of(row).kind()),
            ));
        };
        let values = match obj.get("values") {
            Some(Value::Object(inner)) => Some(inner),
            _ => None,
        };
        let field = |name: &str| {
            values
                .and_then(|v| v.get(name))
                .or_else(|| obj.get(name))
                .map(scalar_of)
        };
        let head = [field("ts"), field("device_id"), field("district")];
        let slots: Vec<Option<Scalar<'_>>> = self.def.columns.iter().map(|c| field(&c.name)).collect();
        let (ts, device_id, district) = self.head(&head)?;
        let mut cells = Vec::with_capacity(self.def.columns.len());
        for (column, slot) in self.def.columns.iter().zip(&slots) {
            cells.push(read_cell(slot.as_ref(), column.kind, &column.name)?);
        }
        sink.push(
            self.table,
            &Row {
                ts,
                device_id: &device_id,
                district: &district,
                cells: &cells,
            },
            msg,
        );
        Ok(())
    }

    /// `ts`, `device_id` and `district` of a row from its first three field slots.
    fn head<'v>(&'v self, head: &'v [Option<Scalar<'_>>]) -> Result<(EpochMs, Cow<'v, str>, Cow<'v, str>), RowError> {
        let ts = read_ts(head[0].as_ref(), self.max_ts)?;
        let device_id = text_or(head[1].as_ref(), self.topic_device, "device_id")?;
        if device_id.is_empty() {
            return Err((
                Reason::MissingDeviceId,
                "no device_id in the payload or the topic".to_string(),
            ));
        }
        let district = text_or(head[2].as_ref(), self.topic_district, "district")?;
        Ok((ts, device_id, district))
    }

    /// Pushes every scanned row, or none when any row is bad (the full path then decodes
    /// the message and explains each bad row).
    fn push_scanned(&self, scanned: &Scanned<'_>, msg: &Received<'_>, sink: &mut impl RowSink) -> Option<Outcome> {
        let columns = self.def.columns.len();
        // Inline room for one row: a message of one reading allocates nothing here.
        let mut heads: SmallVec<[_; 1]> = SmallVec::new();
        let mut cells: SmallVec<[Cell<'_>; INLINE_SLOTS]> = SmallVec::new();
        for row in scanned.rows() {
            heads.push(self.head(&row[..3]).ok()?);
            for (column, slot) in self.def.columns.iter().zip(&row[3..]) {
                cells.push(read_cell(slot.as_ref(), column.kind, &column.name).ok()?);
            }
        }
        for (i, (ts, device_id, district)) in heads.iter().enumerate() {
            sink.push(
                self.table,
                &Row {
                    ts: *ts,
                    device_id,
                    district,
                    cells: &cells[i * columns..(i + 1) * columns],
                },
                msg,
            );
        }
        Some(Outcome {
            accepted: heads.len() as u64,
            rejected: 0,
        })
    }
}

fn read_ts(value: Option<&Scalar<'_>>, max_ts: EpochMs) -> Result<EpochMs, RowError> {
    let ts = match value {
        None | Some(Scalar::Null) => return Err((Reason::MissingTs, "the row has no ts".to_string())),
        Some(Scalar::Int(ms)) => *ms,
        Some(n @ (Scalar::UInt(_) | Scalar::Float(_))) => match n {
            Scalar::Float(ms) if ms.is_finite() && ms.abs() < 9.0e15 => ms.floor() as i64,
            _ => {
                let n = n.number_text().unwrap_or_default();
                return Err((Reason::BadTs, format!("ts {n} is not a usable number of milliseconds")));
            }
        },
        Some(Scalar::Text(text)) => parse_ts_text(text).map_err(|_| {
            (
                Reason::BadTs,
                format!("ts {text:?} is not epoch milliseconds or RFC 3339"),
            )
        })?,
        Some(other) => return Err((Reason::BadTs, format!("ts is {}, not a number or text", other.kind()))),
    };
    if !(MIN_TS_MS..=max_ts).contains(&ts) {
        return Err((
            Reason::TsOutOfRange,
            format!(
                "ts {} is before 2000 or beyond the allowed future skew",
                crate::time::format_ms(ts)
            ),
        ));
    }
    Ok(ts)
}

/// A text field, or `fallback` when absent; numbers are accepted as ids.
fn text_or<'v>(value: Option<&'v Scalar<'_>>, fallback: &'v str, name: &str) -> Result<Cow<'v, str>, RowError> {
    match value {
        None | Some(Scalar::Null) => Ok(Cow::Borrowed(fallback)),
        Some(Scalar::Text(s)) => Ok(Cow::Borrowed(s.as_ref())),
        Some(n @ (Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_))) => {
            Ok(Cow::Owned(n.number_text().unwrap_or_default()))
        }
        Some(other) => Err((
            Reason::WrongType,
            format!("`{name}` must be text, got {}", other.kind()),
        )),
    }
}

fn read_cell<'v>(value: Option<&'v Scalar<'_>>, kind: ColumnType, name: &str) -> Result<Cell<'v>, RowError> {
    let number = |f: f64, n: &Scalar<'_>| {
        if f.is_finite() {
            Ok(Cell::Float(f))
        } else {
            let n = n.number_text().unwrap_or_default();
            Err((Reason::WrongType, format!("`{name}` = {n} is not a finite number")))
        }
    };
    match (kind, value) {
        (_, None | Some(Scalar::Null)) => Ok(Cell::Null),
        (ColumnType::Float, Some(n @ Scalar::Int(i))) => number(*i as f64, n),
        (ColumnType::Float, Some(n @ Scalar::UInt(u))) => number(*u as f64, n),
        (ColumnType::Float, Some(n @ Scalar::Float(f))) => number(*f, n),
        // Many gateways quote numbers; a quoted number is still a number.
        (ColumnType::Float, Some(Scalar::Text(s))) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Cell::Float(f)),
            _ => Err((Reason::WrongType, format!("`{name}` expects a number, got {s:?}"))),
        },
        (ColumnType::String, Some(Scalar::Text(s))) => Ok(Cell::Text(Cow::Borrowed(s.as_ref()))),
        (ColumnType::String, Some(n @ (Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_)))) => {
            Ok(Cell::Text(Cow::Owned(n.number_text().unwrap_or_default())))
        }
        (ColumnType::String, Some(Scalar::Bool(b))) => Ok(Cell::Text(Cow::Owned(b.to_string()))),
        (expected, Some(other)) => Err((
            Reason::WrongType,
            format!(
                "`{name}` expects {}, got {}",
                if expected == ColumnType::Float {
                    "a number"
                } else {
                    "text"
                },
                other.kind()
            ),
        )),
    }
}

fn kept_text(payload: &[u8]) -> String {
    let end = payload.len().min(KEPT_TEXT_BYTES);
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects accepted rows as (table, ts, device, district, cells) for assertions.
    #[derive(Default)]
    struct Collected(Vec<(usize, EpochMs, String, String, Vec<Cell<'static>>)>);

    impl RowSink for Collected {
        fn push(&mut self, table: usize, row: &Row<'_>, _msg: &Received<'_>) {
            let cells = row
                .cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Cell::Null,
                    Cell::Float(f) => Cell::Float(*f),
                    Cell::Text(t) => Cell::Text(Cow::Owned(t.to_string())),
                })
                .collect();
            self.0.push((
                table,
                row.ts,
                row.device_id.to_string(),
                row.district.to_string(),
                cells,
            ));
        }
    }

    const NOW: EpochMs = 1_768_418_100_000;

    fn decoder() -> Decoder {
        let pattern = TopicPattern::parse("city/{district}/{table}/{device_id}").expect("valid");
        Decoder::new(Catalog::builtin(), pattern, 1024, 86_400_000)
    }

    fn message(topic: &str, payload: &str) -> Message {
        Message {
            at_ms: 0,
            topic: topic.to_string(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            recorded_invalid: false,
            arrived_ns: 0,
            ..Message::default()
        }
    }

    fn run(topic: &str, payload: &str) -> (Collected, Vec<DeadLetter>, Outcome) {
        let mut rows = Collected::default();
        let mut rejects = Vec::new();
        let outcome = decoder().decode(&message(topic, payload), NOW, &mut rows, &mut |d| rejects.push(d));
        (rows, rejects, outcome)
    }

    fn reasons(rejects: &[DeadLetter]) -> Vec<Reason> {
        rejects.iter().map(|d| d.reason).collect()
    }

    #[test]
    fn flat_object_takes_district_and_device_from_the_topic() {
        let (rows, rejects, outcome) = run(
            "city/chaoyang/water/wp-03",
            r#"{"ts": 1768418100000, "kind": "pressure", "pressure_mpa": 0.31}"#,
        );
        assert!(rejects.is_empty());
        assert_eq!(
            outcome,
            Outcome {
                accepted: 1,
                rejected: 0
            }
        );
        let (table, ts, device, district, cells) = &rows.0[0];
        assert_eq!(
            (*table, *ts, device.as_str(), district.as_str()),
            (3, NOW, "wp-03", "chaoyang")
        );
        assert_eq!(cells[0], Cell::Text(Cow::Borrowed("pressure")));
        assert_eq!(cells[1], Cell::Float(0.31));
        assert_eq!(cells[2], Cell::Null);
    }

    #[test]
    fn gateway_arrays_keep_good_rows_and_reject_bad_ones() {
        let payload = r#"[{"ts": "2026-01-14T19:15:00Z", "device_id": "r1", "room_temp_c": 21.0},
                          {"ts": 1768418100000, "device_id": "r2", "room_temp_c": "n/a"},
                          {"device_id": "r3", "room_temp_c": 20.5},
                          7]"#;
        let (rows, rejects, outcome) = run("city/haidian/heating/gw-1", payload);
        assert_eq!(
            outcome,
            Outcome {
                accepted: 1,
                rejected: 3
            }
        );
        assert_eq!(rows.0[0].2, "r1");
        assert_eq!(
            reasons(&rejects),
            [Reason::WrongType, Reason::MissingTs, Reason::NotAnObject]
        );
    }

    #[test]
    fn thingsboard_values_are_flattened() {
        let (rows, _, _) = run(
            "city/haidian/heating/r9",
            r#"{"ts": 1768418100000, "values": {"room_temp_c": 19.5, "kind": "room"}}"#,
        );
        assert_eq!(rows.0[0].4[0], Cell::Text(Cow::Borrowed("room")));
        assert_eq!(rows.0[0].4[6], Cell::Float(19.5));
    }

    #[test]
    fn every_message_level_reason_is_detected() {
        assert_eq!(reasons(&run("city/a/water/w", "{not json").1), [Reason::MalformedJson]);
        assert_eq!(reasons(&run("city/a/elevator/e1", "{}").1), [Reason::UnknownTopic]);
        assert_eq!(reasons(&run("city/a/water", "{}").1), [Reason::UnknownTopic]);
        let big = format!(r#"{{"ts": 1, "pad": "{}"}}"#, "x".repeat(2000));
        let (_, rejects, outcome) = run("city/a/water/w", &big);
        assert_eq!((reasons(&rejects), outcome.rejected), (vec![Reason::Oversized], 1));
        assert_eq!(reasons(&run("city/a/water/w", "42").1), [Reason::NotAnObject]);
    }

    #[test]
    fn payloads_are_checked_as_utf8_once_and_escapes_still_decode() {
        let mut rows = Collected::default();
        let mut rejects = Vec::new();
        let mut bad = message("city/a/water/w", "");
        bad.payload = bytes::Bytes::from_static(b"{\"ts\": 1768418100000, \"kind\": \"pr\xffssure\"}");
        let outcome = decoder().decode(&bad, NOW, &mut rows, &mut |d| rejects.push(d));
        assert_eq!(
            (reasons(&rejects), outcome.rejected, rows.0.len()),
            (vec![Reason::MalformedJson], 1, 0)
        );

        let (rows, rejects, _) = run(
            "city/a/water/w",
            r#"{"ts": 1768418100000, "kind": "pr\u00e9ssure", "district": "h\u00e9", "pressure_mpa": 0.3}"#,
        );
        assert!(rejects.is_empty());
        let (_, _, _, district, cells) = &rows.0[0];
        assert_eq!(
            (district.as_str(), &cells[0]),
            ("h\u{e9}", &Cell::Text(Cow::Borrowed("pr\u{e9}ssure")))
        );
    }

    #[test]
    fn every_row_level_reason_is_detected() {
        let cases = [
            (r#"{"kind": "pressure"}"#, Reason::MissingTs),
            (r#"{"ts": "soon"}"#, Reason::BadTs),
            (r#"{"ts": true}"#, Reason::BadTs),
            (r#"{"ts": 4102444800000}"#, Reason::TsOutOfRange),
            (r#"{"ts": 5}"#, Reason::TsOutOfRange),
            (r#"{"ts": 1768418100000, "ph": "acidic"}"#, Reason::WrongType),
            (r#"{"ts": 1768418100000, "kind": {"a": 1}}"#, Reason::WrongType),
        ];
        for (payload, expected) in cases {
            let (rows, rejects, _) = run("city/a/water/w1", payload);
            assert!(rows.0.is_empty(), "{payload}");
            assert_eq!(reasons(&rejects), [expected], "{payload}");
        }
        let (_, rejects, _) = run("city/a/water/", r#"{"ts": 1768418100000}"#);
        assert_eq!(reasons(&rejects), [Reason::MissingDeviceId]);
    }

    #[test]
    fn quoted_numbers_and_compact_timestamps_are_accepted() {
        let (rows, rejects, _) = run("city/a/water/w1", r#"{"ts": "20260114T191500Z", "ph": "7.4"}"#);
        assert!(rejects.is_empty(), "{rejects:?}");
        assert_eq!((rows.0[0].1, &rows.0[0].4[5]), (NOW, &Cell::Float(7.4)));
    }

    /// Each line of `text` as decoded after a replay read it, its payload cut or not:
    /// outcome, rows and dead letters; and how many lines were read in place, and how many
    /// of them had their payload cut.
    fn decoded_lines(text: &str, cut: bool) -> (Vec<String>, usize, usize) {
        use crate::flow::{LineBlock, LineBurst};
        use crate::ingest::fixture::{FixtureReader, LineRead};
        let decoder = decoder();
        let bytes = std::io::Cursor::new(text.as_bytes().to_vec());
        let mut reader = FixtureReader::from_reader(Box::new(bytes), "lines.jsonl".to_string());
        reader.cut_payloads(cut);
        let mut block: Option<LineBlock> = None;
        let (mut seen, mut in_place, mut cuts) = (Vec::new(), 0, 0);
        for read in reader.reads() {
            let mut rows = Collected::default();
            let mut letters = Vec::new();
            let outcome = match read {
                Ok(LineRead::Block(next)) => {
                    block = Some(next);
                    continue;
                }
                Ok(LineRead::Line(line)) => {
                    in_place += 1;
                    cuts += usize::from(line.cut);
                    let block = block.as_ref().expect("lines come after their block");
                    let burst = LineBurst {
                        block: block.bytes.clone(),
                        source: Arc::clone(&block.source),
                        lines: vec![line],
                    };
                    let msg = burst.received().next().expect("one line");
                    decoder.decode_received(&msg, NOW, &mut rows, &mut |d| letters.push(d))
                }
                Ok(LineRead::Message(msg)) => decoder.decode(&msg, NOW, &mut rows, &mut |d| letters.push(d)),
                Err(bad) => {
                    letters.push(bad_line_letter(&bad));
                    Outcome {
                        accepted: 0,
                        rejected: 1,
                    }
                }
            };
            let letters: Vec<_> = letters
                .iter()
                .map(|d| format!("{} {} {} {} {}", d.reason.as_str(), d.detail, d.topic, d.at, d.payload))
                .collect();
            seen.push(format!(
                "{}/{} {:?} {letters:?}",
                outcome.accepted, outcome.rejected, rows.0
            ));
        }
        (seen, in_place, cuts)
    }

    #[test]
    fn a_cut_line_decodes_as_the_line_read_whole_does() {
        let pad = "x".repeat(1_100);
        let lines = [
            r#"{"at":1,"payload":{"ts":1768418100000,"ph":7.1},"topic":"city/a/water/w1"}"#.to_string(),
            r#"{"at":2,"topic":"city/a/water/w1","payload":{"ts":1768418100000,"ph":7.2}}"#.to_string(),
            r#"{"at":3,"payload":{"ts":1768418100000,"ph":7.3},"note":{"s":"}"},"topic":"city/a/water/w1"}"#.to_string(),
            r#"{"at":4,"payload":{"ts":1768418100000},"at":5,"x":[],"topic":"city/a/water/w1"}"#.to_string(),
            r#"{"at":6,"payload":{"ts":1768418100000,},"topic":"city/a/water/w1"}"#.to_string(),
            format!(r#"{{"at":7,"payload":{{"ts":1768418100000,"ph":7.4}},"pad":["{pad}"],"topic":"city/a/water/w1"}}"#),
            r#"{"at":8,"payload":{"ts":1},"x":{},"topic":"nowhere"}"#.to_string(),
            r#"{"at":9,"payload":{},"at":10,"x":{},"topic":"nowhere"}"#.to_string(),
            r#"{"at":11,"topic":"city/a/water/w1","raw":"{oops"}"#.to_string(),
            r#"{"at":12,"payload":[{"device_id":"w2","ts":1768418100000,"ph":7.0},{"ts":"soon"}],"topic":"city/a/water/gw"}"#.to_string(),
            r#"{"at":13,"payload":42,"topic":"city/a/water/w1"}"#.to_string(),
            r#"{"at":14,"payload":null,"topic":"city/a/water/w1"}"#.to_string(),
            r#"{"at":15,"payload":{"ts":1768418100000},"topic":"city\/a\/water\/w1"}"#.to_string(),
            r#"{"at":16,"payload":{"ts":1768418100000},"topic":"city/a/water/w1"} x"#.to_string(),
            r#"{"at":17,"payload":{"ts":1768418100000}},"topic":"city/a/water/w1"}"#.to_string(),
        ];
        let text = lines.join("\n");
        let (whole, scanned, none_cut) = decoded_lines(&text, false);
        let (cut, in_place, cuts) = decoded_lines(&text, true);
        assert_eq!(cut, whole);
        assert_eq!((scanned, none_cut), (4, 0), "lines 1, 2, 5 and 10 scanned");
        assert_eq!((in_place, cuts), (10, 10), "lines 1-8, 10 and 15 cut");
        let outcomes: Vec<&str> = whole.iter().map(|line| &line[..3]).collect();
        assert_eq!(
            outcomes,
            [
                "1/0", "1/0", "1/0", "0/1", "0/1", "1/0", "0/1", "0/1", "0/1", "1/1", "0/1", "0/1", "1/0", "0/1", "0/1"
            ]
        );
        for (line, expected) in [
            (4, "malformed_json fixture lines.jsonl line 4: duplicate field `at`"),
            (5, "malformed_json trailing comma"),
            (7, "unknown_topic topic does not match"),
            (8, "malformed_json fixture lines.jsonl line 8: duplicate field `at`"),
            (15, "malformed_json fixture lines.jsonl line 15: missing field `topic`"),
        ] {
            assert!(whole[line - 1].contains(expected), "line {line}: {}", whole[line - 1]);
        }
    }
}
