//! Fixture files: JSON Lines of `{"at": ms_offset, "topic": "…", "payload": <JSON>}` (or
//! `"raw": "<text>"` for a recorded payload that was not JSON), optionally zstd-compressed.
//! The reader yields messages in file order; it parses only the envelope, never the payload
//! (the common shape is scanned by hand, `envelope`; the rest goes through serde).

use std::fs::File;
use std::io::Read;

use bytes::{Bytes, BytesMut};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::flow::Message;

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

#[derive(Deserialize)]
struct Envelope<'a> {
    at: f64,
    topic: String,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    raw: Option<String>,
}

/// Streams the messages of a fixture.
pub struct FixtureReader {
    lines: Lines,
    source_name: String,
    line_no: u64,
}

/// Bytes read ahead at a time. Lines are cut from one shared buffer, so a message's payload
/// is a slice of it: one allocation per chunk instead of two per message. 64 KiB chunks are
/// recycled by the allocator; megabyte chunks went back to the kernel and came back zeroed.
const CHUNK: usize = 64 << 10;

/// Newline-separated lines of a reader, as shared slices of chunk buffers.
struct Lines {
    reader: Box<dyn Read + Send>,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    searched: usize,
    eof: bool,
}

impl Lines {
    fn next_line(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buf[self.searched..]) {
                let line = self.buf.split_to(self.searched + at + 1).freeze();
                self.searched = 0;
                return Ok(Some(line));
            }
            self.searched = self.buf.len();
            if self.eof {
                self.searched = 0;
                return Ok((!self.buf.is_empty()).then(|| self.buf.split().freeze()));
            }
            // A new chunk (the old one stays alive while its messages are in flight).
            let filled = self.buf.len();
            self.buf.reserve(CHUNK);
            self.buf.resize(filled + CHUNK, 0);
            let read = loop {
                match self.reader.read(&mut self.buf[filled..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let read = match read {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(filled);
                    return Err(e);
                }
            };
            self.buf.truncate(filled + read);
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
            lines: Lines {
                reader,
                buf: BytesMut::new(),
                searched: 0,
                eof: false,
            },
            source_name,
            line_no: 0,
        }
    }

    /// The messages in order (a broken line is an `Err` item; reading goes on after it).
    pub fn messages(&mut self) -> impl Iterator<Item = Result<Message, FixtureError>> + '_ {
        std::iter::from_fn(|| self.next_message().transpose())
    }

    /// The next message, `None` at the end. `arrived_ns` is left 0 for the caller to stamp.
    pub fn next_message(&mut self) -> Result<Option<Message>, FixtureError> {
        loop {
            let line = self.lines.next_line().map_err(|source| FixtureError::Io {
                source_name: self.source_name.clone(),
                source,
            })?;
            let Some(line) = line else {
                return Ok(None);
            };
            self.line_no += 1;
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            if let Some(fast) = super::envelope::scan(text)
                && fast.at.is_finite()
                && fast.at >= 0.0
            {
                return Ok(Some(Message {
                    at_ms: fast.at as i64,
                    topic: fast.topic.to_string(),
                    payload: slice_of(&line, fast.payload),
                    recorded_invalid: false,
                    arrived_ns: 0,
                    ..Message::default()
                }));
            }
            let envelope: Envelope = serde_json::from_slice(text).map_err(|e| self.line_error(e.to_string()))?;
            let (payload, recorded_invalid) = match (envelope.payload, envelope.raw) {
                (Some(p), None) => (slice_of(&line, p.get().as_bytes()), false),
                (None, Some(raw)) => (Bytes::from(raw.into_bytes()), true),
                _ => return Err(self.line_error("needs exactly one of `payload` and `raw`".to_string())),
            };
            if !envelope.at.is_finite() || envelope.at < 0.0 {
                return Err(self.line_error("`at` must be a non-negative number of milliseconds".to_string()));
            }
            return Ok(Some(Message {
                at_ms: envelope.at as i64,
                topic: envelope.topic,
                payload,
                recorded_invalid,
                arrived_ns: 0,
                ..Message::default()
            }));
        }
    }

    fn line_error(&self, message: String) -> FixtureError {
        FixtureError::Line {
            source_name: self.source_name.clone(),
            line: self.line_no,
            message,
        }
    }
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
