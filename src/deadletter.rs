//! The dead-letter writer: every row the pipeline will not use, with its reason, written to
//! a JSON Lines file by one writer thread. Stages only build `flow::DeadLetter` values and
//! hand them over; counting happens where they are produced (see `metrics`). Late rows are
//! the exception: rules only mark them, and [`LateLetters`] writes each once, with every
//! rule it was late for, when its batch is dropped.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::flow::{DeadLetter, LateRowsOut, Reason, TableBatch};
use crate::metrics::Metrics;
use crate::rules::output::row_json;

/// The writer thread's handle; dropping every sender ends it.
pub(crate) struct DeadLetterWriter {
    handle: JoinHandle<std::io::Result<u64>>,
}

/// Starts the writer on `path`; returns the sender stages use and the writer's handle.
pub(crate) fn start(
    path: &Path,
    rotation: Rotation,
    capacity: usize,
    append: bool,
) -> std::io::Result<(Sender<DeadLetter>, DeadLetterWriter)> {
    let file = RotatingFile::open(path, rotation, append)?;
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let handle = std::thread::Builder::new()
        .name("dead-letters".to_string())
        .spawn(move || write_all(rx, file))?;
    Ok((tx, DeadLetterWriter { handle }))
}

/// Writes every letter until the senders are gone. A failed write (disk full, the file
/// moved away) costs that letter, not the writer: it is logged (sparingly), the file is
/// opened again, and the counters, kept where letters are made, stay exact.
fn write_all(rx: Receiver<DeadLetter>, mut out: RotatingFile) -> std::io::Result<u64> {
    let mut written = 0;
    let mut failed: u64 = 0;
    let mut line = Vec::new();
    for letter in rx {
        line.clear();
        serde_json::to_writer(&mut line, &letter)?;
        line.push(b'\n');
        match out.write_line(&line) {
            Ok(()) => written += 1,
            Err(e) => {
                failed += 1;
                if failed.is_power_of_two() {
                    tracing::error!(file = %out.path.display(), error = %e, failed, "dead letters could not be written (they stay counted); free disk space or fix the file's directory");
                }
                if let Err(e) = out.reopen() {
                    tracing::debug!(error = %e, "the dead-letter file could not be opened again");
                }
            }
        }
    }
    out.flush()?;
    Ok(written)
}

/// How large the dead-letter file may grow, and how many full ones are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rotation {
    pub(crate) max_bytes: u64,
    /// Rotated files kept beside the live one (`FILE.1` newest … `FILE.N` oldest).
    pub(crate) keep: usize,
}

/// A JSON Lines file that is rotated by size: when the next line would take it past
/// `max_bytes`, `FILE` becomes `FILE.1`, `FILE.1` becomes `FILE.2` …, the oldest beyond
/// `keep` is deleted, and a new `FILE` starts. Lines are never split across files.
struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    out: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    fn open(path: &Path, rotation: Rotation, append: bool) -> std::io::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = if append {
            crate::state::open_appending_lines(path)?
        } else {
            File::create(path)?
        };
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            rotation,
            out: BufWriter::new(file),
            size,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let numbered = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.rotation.keep == 0 {
            unless_missing(std::fs::remove_file(&self.path))?;
        } else {
            unless_missing(std::fs::remove_file(numbered(self.rotation.keep)))?;
            for n in (1..self.rotation.keep).rev() {
                unless_missing(std::fs::rename(numbered(n), numbered(n + 1)))?;
            }
            // A live file someone moved away counts as rotated already.
            unless_missing(std::fs::rename(&self.path, numbered(1)))?;
        }
        self.out = BufWriter::new(File::create(&self.path)?);
        self.size = 0;
        tracing::info!(file = %self.path.display(), kept = self.rotation.keep, "dead-letter file rotated");
        Ok(())
    }

    /// Opens the live file again for appending (after a failed write or rotation).
    fn reopen(&mut self) -> std::io::Result<()> {
        let file = crate::state::open_appending_lines(&self.path)?;
        self.size = file.metadata()?.len();
        self.out = BufWriter::new(file);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
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

/// Turns a batch's late rows into dead letters, one per row, and counts them.
pub(crate) struct LateLetters {
    pub(crate) dead_letters: Sender<DeadLetter>,
    pub(crate) metrics: Arc<Metrics>,
}

impl LateRowsOut for LateLetters {
    fn dead_letter(&self, batch: &TableBatch, rows: Vec<(u32, Vec<String>)>) {
        self.metrics.add_rejected(Reason::Late, rows.len() as u64);
        for (row, rules) in rows {
            let row = row as usize;
            let _ = self.dead_letters.send(DeadLetter {
                reason: Reason::Late,
                detail: format!(
                    "late for {} rule(s): every window of {} holding this row had closed",
                    rules.len(),
                    rules.join(", ")
                ),
                topic: batch.topics.value(row).to_string(),
                at: batch.at_ms[row],
                rules,
                payload: row_json(&batch.batch, row),
            });
        }
    }
}

/// Done, or there was nothing to do: the file was not there (never made, or moved away).
fn unless_missing(done: std::io::Result<()>) -> std::io::Result<()> {
    match done {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .map(|text| text.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    #[test]
    fn rotation_keeps_the_newest_files_and_never_splits_a_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dead.jsonl");
        let rotation = Rotation { max_bytes: 20, keep: 2 };
        let mut file = RotatingFile::open(&path, rotation, false).expect("open");
        // Nine lines of 10 bytes: two per file.
        for i in 0..9 {
            file.write_line(format!("line {i:03}\n").as_bytes()).expect("write");
        }
        file.flush().expect("flush");
        assert_eq!(lines(&path), ["line 008"]);
        assert_eq!(lines(&dir.path().join("dead.jsonl.1")), ["line 006", "line 007"]);
        assert_eq!(lines(&dir.path().join("dead.jsonl.2")), ["line 004", "line 005"]);
        assert!(!dir.path().join("dead.jsonl.3").exists());
    }

    #[test]
    fn a_live_file_moved_away_counts_as_rotated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dead.jsonl");
        let mut file = RotatingFile::open(&path, Rotation { max_bytes: 20, keep: 2 }, false).expect("open");
        file.write_line(b"line 000\n").expect("write");
        file.flush().expect("flush");
        std::fs::rename(&path, dir.path().join("elsewhere")).expect("moved away");
        file.write_line(b"line 001\n").expect("write");
        file.write_line(b"line 002\n")
            .expect("rotates although the file is gone");
        file.flush().expect("flush");
        assert_eq!(lines(&path), ["line 002"]);
    }

    #[test]
    fn a_line_longer_than_the_limit_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dead.jsonl");
        let mut file = RotatingFile::open(&path, Rotation { max_bytes: 4, keep: 1 }, false).expect("open");
        file.write_line(b"0123456789\n").expect("write");
        file.write_line(b"ab\n").expect("write");
        file.flush().expect("flush");
        assert_eq!(lines(&path), ["ab"]);
        assert_eq!(lines(&dir.path().join("dead.jsonl.1")), ["0123456789"]);
    }
}
