//! Fixture files: JSON Lines of `{"at": ms_offset, "topic": "…", "payload": <JSON>}` (or
//! `"raw": "<text>"` for a recorded payload that was not JSON), optionally zstd-compressed.
//! The reader yields messages in file order; it parses only the envelope, never the payload
//! (the common shape is scanned by hand, `envelope`; the rest goes through serde). It reads
//! blocks of whole lines; a replay takes the common envelope's lines in place (`reads`: a
//! block, then each line's topic and payload as ranges of it), other users whole
//! `Message`s (`messages`). A replay into the decode workers has payloads cut rather than
//! scanned (`cut_payloads`, `envelope::cut`): the decoder checks them (`read_line`).

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::flow::{DeadLetter, LineAt, LineBlock, Message, Reason};

/// The demo city's recorded day, embedded so `cityops run` works from any directory.
pub(crate) const DEMO_FIXTURE: &[u8] = include_bytes!("../../fixtures/demo/city-day.jsonl.zst");

/// A fixture that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot open fixture {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("fixture {source_name} line {line}: {message}")]
    Line {
        source_name: String,
        line: u64,
        message: String,
    },
    #[error("reading fixture {source_name}: {source}")]
    Io {
        source_name: String,
        source: std::io::Error,
    },
}

/// Any envelope, as the full parser reads it.
#[derive(Deserialize)]
struct FullEnvelope<'a> {
    at: f64,
    topic: String,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    raw: Option<String>,
}

/// Streams the messages of a fixture.
pub struct FixtureReader {
    blocks: Blocks,
    /// The block whose lines are being read, and where the next line starts in it.
    block: Bytes,
    at: usize,
    source_name: Arc<str>,
    line_no: u64,
    /// Whether common lines have their payload cut rather than scanned (`cut_payloads`).
    cut: bool,
}

/// What the reader reads next (`FixtureReader::next_read`).
#[derive(Debug)]
pub(crate) enum LineRead {
    /// A new block of whole lines begins: the `Line`s that follow lie in it.
    Block(LineBlock),
    /// A line of the common envelope, in place in the current block.
    Line(LineAt),
    /// A line read into a message of its own (`raw`, or an envelope the hand scan leaves
    /// to serde).
    Message(Message),
}

impl LineRead {
    /// The envelope's time (`None` for a block).
    pub(crate) fn at_ms(&self) -> Option<i64> {
        match self {
            LineRead::Block(_) => None,
            LineRead::Line(line) => Some(line.at_ms),
            LineRead::Message(msg) => Some(msg.at_ms),
        }
    }
}

/// Bytes read ahead at a time. Lines are cut from one shared buffer, so a message's payload
/// is a slice of it: one allocation per chunk instead of two per message. 64 KiB chunks are
/// recycled by the allocator; megabyte chunks went back to the kernel and came back zeroed.
const CHUNK: usize = 64 << 10;

/// A byte stream cut into blocks of whole lines.
struct Blocks {
    reader: Box<dyn Read + Send>,
    /// What was read and not yet handed out as a block: a line still unfinished, then what
    /// the last read brought.
    buf: Vec<u8>,
    eof: bool,
}

impl Blocks {
    /// Everything read so far up to its last newline (at the end, the rest, newline or
    /// not); `None` once the stream is used up.
    fn next_block(&mut self) -> std::io::Result<Option<Bytes>> {
        // Bytes of `buf` known to hold no newline.
        let mut searched = 0;
        loop {
            if let Some(last) = memchr::memrchr(b'\n', &self.buf[searched..]) {
                let end = searched + last + 1;
                // The unfinished line starts the next buffer; this one becomes the block, its
                // allocation handed over, not copied (it stays alive while its messages are in
                // flight).
                let mut next = Vec::with_capacity(self.buf.len() - end + CHUNK);
                next.extend_from_slice(&self.buf[end..]);
                let whole = Bytes::from(std::mem::replace(&mut self.buf, next));
                return Ok(Some(whole.slice(..end)));
            }
            searched = self.buf.len();
            if self.eof {
                return Ok((!self.buf.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.buf))));
            }
            // `read_to_end` lets a file fill the spare room as it is, where `read` needs it
            // zeroed first (a memset of every byte of the file).
            self.buf.reserve(CHUNK);
            let read = (&mut self.reader).take(CHUNK as u64).read_to_end(&mut self.buf)?;
            self.eof = read == 0;
        }
    }
}

impl FixtureReader {
    /// Opens a fixture file; `.zst` files are decompressed on the fly.
    pub fn open(path: &Path) -> Result<Self, FixtureError> {
        let file = File::open(path).map_err(|source| FixtureError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path.display().to_string();
        let reader: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "zst") {
            let decoder = zstd::Decoder::new(file).map_err(|source| FixtureError::Open {
                path: path.to_path_buf(),
                source,
            })?;
            Box::new(decoder)
        } else {
            Box::new(file)
        };
        Ok(Self::from_reader(reader, name))
    }

    /// The embedded demo fixture.
    pub fn demo() -> Result<Self, FixtureError> {
        let decoder = zstd::Decoder::new(DEMO_FIXTURE).map_err(|source| FixtureError::Io {
            source_name: "<embedded demo>".to_string(),
            source,
        })?;
        Ok(Self::from_reader(Box::new(decoder), "<embedded demo>".to_string()))
    }

    /// Any byte stream of fixture lines (uncompressed).
    pub fn from_reader(reader: Box<dyn Read + Send>, source_name: String) -> Self {
        FixtureReader {
            blocks: Blocks {
                reader,
                buf: Vec::new(),
                eof: false,
            },
            block: Bytes::new(),
            at: 0,
            source_name: source_name.into(),
            line_no: 0,
            cut: false,
        }
    }

    /// From now on, cut the payload of common lines rather than scan it (`envelope::cut`):
    /// for a reader whose lines all reach a decode worker, which checks each cut as it
    /// parses the payload. A cut line of another shape than its payload suggests (another
    /// key after the payload, say) is found there and read again (`read_line`).
    pub(crate) fn cut_payloads(&mut self, cut: bool) {
        self.cut = cut;
    }

    /// The messages in order (a broken line is an `Err` item; reading goes on after it).
    pub fn messages(&mut self) -> impl Iterator<Item = Result<Message, FixtureError>> + '_ {
        std::iter::from_fn(|| self.next_message().transpose())
    }

    /// The lines in order, read in place where they can be (see `next_read`).
    pub(crate) fn reads(&mut self) -> impl Iterator<Item = Result<LineRead, FixtureError>> + '_ {
        std::iter::from_fn(|| self.next_read().transpose())
    }

    /// The next message, `None` at the end. `arrived_ns` is left 0 for the caller to stamp.
    pub fn next_message(&mut self) -> Result<Option<Message>, FixtureError> {
        loop {
            match self.next_read()? {
                None => return Ok(None),
                Some(LineRead::Block(_)) => {}
                Some(LineRead::Line(line)) => return Ok(Some(line.message_in(&self.block))),
                Some(LineRead::Message(msg)) => return Ok(Some(msg)),
            }
        }
    }

    /// What comes next: a new block, or the next line of the current one, read in place
    /// when it has the common envelope (no allocation, no shared count per line); `None` at
    /// the end. `arrived_ns` is left 0 for the caller to stamp.
    pub(crate) fn next_read(&mut self) -> Result<Option<LineRead>, FixtureError> {
        loop {
            if self.at >= self.block.len() {
                let block = self.blocks.next_block().map_err(|source| FixtureError::Io {
                    source_name: self.source_name.to_string(),
                    source,
                })?;
                let Some(block) = block else {
                    return Ok(None);
                };
                self.block = block;
                self.at = 0;
                return Ok(Some(LineRead::Block(LineBlock {
                    bytes: self.block.clone(),
                    source: Arc::clone(&self.source_name),
                })));
            }
            let rest = &self.block[self.at..];
            let start = self.at;
            self.at += memchr::memchr(b'\n', rest).map_or(rest.len(), |newline| newline + 1);
            self.line_no += 1;
            let text = self.block[start..self.at].trim_ascii();
            if text.is_empty() {
                continue;
            }
            if self.cut
                && let Some(cut) = super::envelope::cut(text)
                && valid_at(cut.at)
            {
                return Ok(Some(LineRead::Line(self.line_at(cut, true))));
            }
            let line = read_line(text).map_err(|message| self.line_error(message))?;
            return Ok(Some(match line {
                LineParts::Common(envelope) => LineRead::Line(self.line_at(envelope, false)),
                LineParts::Parsed {
                    at_ms,
                    topic,
                    payload,
                    recorded_invalid,
                } => LineRead::Message(Message {
                    at_ms,
                    topic,
                    payload: match payload {
                        Cow::Borrowed(payload) => slice_of(&self.block, payload),
                        Cow::Owned(raw) => Bytes::from(raw),
                    },
                    recorded_invalid,
                    arrived_ns: 0,
                    ..Message::default()
                }),
            }));
        }
    }

    /// The current line, whose envelope (borrowed from the block) is `envelope`.
    fn line_at(&self, envelope: super::envelope::Envelope<'_>, cut: bool) -> LineAt {
        LineAt {
            at_ms: envelope.at as i64,
            arrived_ns: 0,
            topic: range_in(&self.block, envelope.topic.as_bytes()),
            payload: range_in(&self.block, envelope.payload),
            line_no: self.line_no,
            cut,
        }
    }

    fn line_error(&self, message: String) -> FixtureError {
        FixtureError::Line {
            source_name: self.source_name.to_string(),
            line: self.line_no,
            message,
        }
    }
}

/// A fixture line as read without cutting.
#[derive(Debug)]
pub(crate) enum LineParts<'a> {
    /// The common envelope, scanned: its parts borrowed from the line.
    Common(super::envelope::Envelope<'a>),
    /// Any other line, read by the full parser.
    Parsed {
        at_ms: i64,
        topic: String,
        /// The payload as it lies in the line, or a `raw` one's text.
        payload: Cow<'a, [u8]>,
        recorded_invalid: bool,
    },
}

/// Reads a fixture line (trimmed, not empty): the common envelope by hand
/// (`envelope::scan`), anything else with the full parser; what is wrong with it otherwise.
pub(crate) fn read_line(text: &[u8]) -> Result<LineParts<'_>, String> {
    if let Some(fast) = super::envelope::scan(text)
        && valid_at(fast.at)
    {
        return Ok(LineParts::Common(fast));
    }
    let envelope: FullEnvelope = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let (payload, recorded_invalid) = match (envelope.payload, envelope.raw) {
        (Some(p), None) => (Cow::Borrowed(p.get().as_bytes()), false),
        (None, Some(raw)) => (Cow::Owned(raw.into_bytes()), true),
        _ => return Err("needs exactly one of `payload` and `raw`".to_string()),
    };
    if !valid_at(envelope.at) {
        return Err("`at` must be a non-negative number of milliseconds".to_string());
    }
    Ok(LineParts::Parsed {
        at_ms: envelope.at as i64,
        topic: envelope.topic,
        payload,
        recorded_invalid,
    })
}

/// An envelope's `at` is a non-negative number of milliseconds.
fn valid_at(at: f64) -> bool {
    at.is_finite() && at >= 0.0
}

/// The dead letter of a fixture line that could not be read: counted as one malformed
/// message, with no topic or time (it has none that can be trusted).
pub(crate) fn bad_line_letter(error: &FixtureError) -> DeadLetter {
    DeadLetter {
        reason: Reason::MalformedJson,
        detail: error.to_string(),
        topic: String::new(),
        at: 0,
        rules: Vec::new(),
        payload: serde_json::Value::Null,
    }
}

/// Where `part`, borrowed from `block`, lies in it.
fn range_in(block: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - block.as_ptr() as usize;
    (start, start + part.len())
}

/// `part` (borrowed from `line`) as a shared slice of `line`, without copying.
fn slice_of(line: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).checked_sub(line.as_ptr() as usize);
    match start {
        Some(start) if start + part.len() <= line.len() => line.slice(start..start + part.len()),
        _ => Bytes::copy_from_slice(part),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(text: &'static str) -> FixtureReader {
        FixtureReader::from_reader(Box::new(text.as_bytes()), "test".to_string())
    }

    #[test]
    fn payload_and_raw_lines_become_messages() {
        let mut r = reader(
            "{\"at\": 5, \"topic\": \"city/a/water/w1\", \"payload\": {\"ts\": 1, \"ph\": 7.2}}\n\n\
             {\"at\": 9, \"topic\": \"city/a/water/w1\", \"raw\": \"{not json\"}",
        );
        let first = r.next_message().expect("ok").expect("a message");
        assert_eq!((first.at_ms, first.topic.as_str()), (5, "city/a/water/w1"));
        assert_eq!(&*first.payload, br#"{"ts": 1, "ph": 7.2}"#);
        let second = r.next_message().expect("ok").expect("a message");
        assert!(second.recorded_invalid);
        assert_eq!(&*second.payload, b"{not json");
        assert!(r.next_message().expect("ok").is_none());
    }

    /// Hands out a few bytes per read, so lines straddle reads.
    struct Trickle(&'static [u8]);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn lines_are_read_in_place_from_blocks_of_whole_lines() {
        let text = "{\"at\": 5, \"topic\": \"city/a/water/w1\", \"payload\": {\"ts\": 1}}\n\
                    {\"at\": 9, \"topic\": \"city/a/water/w1\", \"raw\": \"{not json\"}\n\n\
                    {\"at\": 12, \"topic\": \"city/b/water/w2\", \"payload\": [{\"ts\": 2}]}";
        for cut in [false, true] {
            let mut r = FixtureReader::from_reader(Box::new(Trickle(text.as_bytes())), "test".to_string());
            r.cut_payloads(cut);
            let mut block = Bytes::new();
            let mut seen = Vec::new();
            for read in r.reads() {
                match read.expect("readable") {
                    LineRead::Block(next) => {
                        assert!(next.bytes.ends_with(b"\n") || next.bytes.ends_with(b"}]}"), "{next:?}");
                        assert_eq!(&*next.source, "test");
                        block = next.bytes;
                    }
                    LineRead::Line(line) => seen.push(format!(
                        "{} {} {}",
                        line.at_ms,
                        line.topic_in(&block),
                        String::from_utf8_lossy(&block[line.payload.0..line.payload.1])
                    )),
                    LineRead::Message(msg) => {
                        seen.push(format!("{} {} raw {}", msg.at_ms, msg.topic, msg.recorded_invalid))
                    }
                }
            }
            assert_eq!(
                seen,
                [
                    r#"5 city/a/water/w1 {"ts": 1}"#,
                    "9 city/a/water/w1 raw true",
                    r#"12 city/b/water/w2 [{"ts": 2}]"#
                ]
            );
        }
    }

    #[test]
    fn a_broken_envelope_names_its_line() {
        let mut r = reader("{\"at\": 1, \"topic\": \"t\", \"payload\": 1}\n{\"topic\": \"t\"}\n");
        assert!(r.next_message().is_ok());
        let err = r.next_message().unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_embedded_demo_fixture_is_readable() {
        let mut r = FixtureReader::demo().expect("demo opens");
        assert!(r.next_message().expect("ok").is_some());
    }
}
