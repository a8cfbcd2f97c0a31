//! The dead-letter writer: every row the pipeline will not use, with its reason, written to
//! a JSON Lines file by one writer thread. Stages only build `flow::DeadLetter` values and
//! hand them over; counting happens where they are produced (see `metrics`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::flow::DeadLetter;

/// The writer thread's handle; dropping every sender ends it.
pub(crate) struct DeadLetterWriter {
    handle: JoinHandle<std::io::Result<u64>>,
}

/// Starts the writer on `path`; returns the sender stages use and the writer's handle.
pub(crate) fn start(
    path: &Path,
    capacity: usize,
    append: bool,
) -> std::io::Result<(Sender<DeadLetter>, DeadLetterWriter)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let file = if append {
        crate::state::open_appending_lines(path)?
    } else {
        File::create(path)?
    };
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let handle = std::thread::Builder::new()
        .name("dead-letters".to_string())
        .spawn(move || write_all(rx, BufWriter::new(file)))?;
    Ok((tx, DeadLetterWriter { handle }))
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
    pub(crate) fn finish(self) -> std::io::Result<u64> {
        match self.handle.join() {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::other("dead-letter writer panicked")),
        }
    }
}
