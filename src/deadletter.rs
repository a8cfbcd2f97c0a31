//! Dead letters: every row the pipeline will not use, with the reason, written to a JSON
//! Lines file by one writer thread. Stages only build `DeadLetter` values and hand them over;
//! counting happens where they are produced (see `metrics`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use serde_json::Value;

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
    /// The rule for which the row was late; absent for decode rejections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The row (or the payload text when it was not JSON, truncated when oversized).
    pub payload: Value,
}

/// The writer thread's handle; dropping every sender ends it.
pub struct DeadLetterWriter {
    handle: JoinHandle<std::io::Result<u64>>,
    pub path: PathBuf,
}

/// Starts the writer on `path`; returns the sender stages use and the writer's handle.
pub fn start(path: &Path, capacity: usize) -> std::io::Result<(Sender<DeadLetter>, DeadLetterWriter)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let file = File::create(path)?;
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let handle = std::thread::Builder::new()
        .name("dead-letters".to_string())
        .spawn(move || write_all(rx, BufWriter::new(file)))?;
    Ok((
        tx,
        DeadLetterWriter {
            handle,
            path: path.to_path_buf(),
        },
    ))
}

fn write_all(rx: Receiver<DeadLetter>, mut out: BufWriter<File>) -> std::io::Result<u64> {
    let mut written = 0;
    for letter in rx {
        serde_json::to_writer(&mut out, &letter)?;
        out.write_all(b"\n")?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}

impl DeadLetterWriter {
    /// Waits for the writer to drain; returns how many dead letters it wrote.
    pub fn finish(self) -> std::io::Result<u64> {
        match self.handle.join() {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::other("dead-letter writer panicked")),
        }
    }
}
