//! Durable state: what lets a run killed at any moment start again with nothing lost and
//! nothing sent twice under a new identity. A state directory holds
//!
//! ```text
//! FORMAT                 "cityops-state 1": a directory of another format is refused
//! LOCK                   held (flock) by the one run using the directory
//! log/<first seq>.wal    the write-ahead log (`log`): every message before its ack
//! checkpoints/           checkpoint files and MANIFEST.json (`checkpoint`)
//! deliveries.log         notifications the sinks have delivered (`deliveries`)
//! ```
//!
//! The log is written by the intake stage (`ingest::wal`), checkpoints and delivery records
//! by the sink thread (`alert::durable`); `pipeline` recovers from them at start.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

pub(crate) mod assembly;
pub(crate) mod checkpoint;
pub(crate) mod deliveries;
pub(crate) mod log;
pub(crate) mod snapshot;

/// What the `FORMAT` file of a state directory says.
const FORMAT: &str = "cityops-state 1";

/// A state directory that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {dir} was written by an incompatible cityops (its FORMAT says `{found}`, this version reads `{FORMAT}`); move it aside or point --state elsewhere"
    )]
    Incompatible { dir: PathBuf, found: String },
    #[error("state directory {dir} is in use by another cityops (its LOCK is held)")]
    Locked { dir: PathBuf },
    #[error(
        "state directory {dir} has no usable checkpoint and its log no longer starts at the beginning, so its state cannot be rebuilt: {problems}; move it aside to start afresh"
    )]
    Unrecoverable { dir: PathBuf, problems: String },
    #[error("state directory {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
}

/// An open state directory, locked for this run.
#[derive(Debug)]
pub(crate) struct StateDir {
    root: PathBuf,
    /// Held for the run: a second cityops on the same directory is refused.
    _lock: File,
    /// Whether the directory held nothing before this run.
    pub fresh: bool,
}

impl StateDir {
    /// Opens (creating when missing) and locks a state directory; refuses one of another
    /// format or one another process holds.
    pub(crate) fn open(root: &Path) -> Result<Self, StateError> {
        let io_error = |source| StateError::Io {
            dir: root.to_path_buf(),
            source,
        };
        fs::create_dir_all(root).map_err(io_error)?;
        let format_path = root.join("FORMAT");
        let fresh = match fs::read_to_string(&format_path) {
            Ok(found) if found.trim() == FORMAT => false,
            Ok(found) => {
                return Err(StateError::Incompatible {
                    dir: root.to_path_buf(),
                    found: found.trim().chars().take(80).collect(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let occupied = fs::read_dir(root).map_err(io_error)?.next().is_some();
                if occupied {
                    return Err(StateError::Incompatible {
                        dir: root.to_path_buf(),
                        found: "no FORMAT file, but the directory is not empty".to_string(),
                    });
                }
                checkpoint::write_durably(root, "FORMAT", format!("{FORMAT}\n").as_bytes()).map_err(io_error)?;
                true
            }
            Err(e) => return Err(io_error(e)),
        };
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("LOCK"))
            .map_err(io_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    dir: root.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_error(e)),
        }
        Ok(StateDir {
            root: root.to_path_buf(),
            _lock: lock,
            fresh,
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    pub(crate) fn checkpoint_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub(crate) fn deliveries_path(&self) -> PathBuf {
        self.root.join("deliveries.log")
    }
}

/// Opens a JSON Lines file to append to, after a crash that may have left half a line at its
/// end: that half is cut, so the next line starts whole.
pub(crate) fn open_appending_lines(path: &Path) -> io::Result<File> {
    let file = File::options().create(true).read(true).append(true).open(path)?;
    let bytes = fs::read(path)?;
    if let Some(last) = bytes.iter().rposition(|b| *b == b'\n') {
        if last + 1 < bytes.len() {
            file.set_len(last as u64 + 1)?;
        }
    } else if !bytes.is_empty() {
        file.set_len(0)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_written_last_line_is_cut_before_appending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.jsonl");
        fs::write(&path, "{\"a\":1}\n{\"a\":").expect("written");
        let mut file = open_appending_lines(&path).expect("opens");
        std::io::Write::write_all(&mut file, b"{\"a\":2}\n").expect("appends");
        assert_eq!(fs::read_to_string(&path).expect("read"), "{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn a_directory_of_another_format_or_in_use_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = StateDir::open(dir.path()).expect("fresh dir opens");
        assert!(first.fresh);
        assert!(matches!(StateDir::open(dir.path()), Err(StateError::Locked { .. })));
        drop(first);
        assert!(!StateDir::open(dir.path()).expect("reopens").fresh);
        fs::write(dir.path().join("FORMAT"), "cityops-state 99\n").expect("written");
        let refused = StateDir::open(dir.path()).expect_err("refused");
        assert!(refused.to_string().contains("cityops-state 99"), "{refused}");
        let other = tempfile::tempdir().expect("tempdir");
        fs::write(other.path().join("notes.txt"), "mine").expect("written");
        assert!(matches!(
            StateDir::open(other.path()),
            Err(StateError::Incompatible { .. })
        ));
    }
}
