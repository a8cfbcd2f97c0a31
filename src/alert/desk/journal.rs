//! The desk's journal (`<state>/desk.jsonl`, with `--state`): every input the desk took,
//! in order, one JSON object per line: lifecycle notifications, operator actions, and the
//! clock times whose advance sent something. Replaying it into a new desk rebuilds the same
//! desk (its inputs are deterministic), so acknowledgements, assignments, comments,
//! silences, history and statistics survive a restart or a crash. An operator's action is
//! synced to disk before its answer; notifications at the sink's quiet moments, as the
//! delivery record is. A line cut short by a crash is dropped on reading. Once it holds
//! many entries the journal is compacted: rewritten as one snapshot of the desk (written
//! beside it, synced, then renamed over it), at a start and at the sink's quiet moments.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::actions::Operation;
use super::book::{Desk, DeskState};
use crate::alert::warning::Warning;
use crate::time::EpochMs;

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub(crate) enum Entry {
    Warning {
        warning: Box<Warning>,
    },
    Operation {
        operation: Operation,
    },
    Advanced {
        now_ms: EpochMs,
        deadlines: bool,
    },
    /// The whole desk: what every entry before it added up to.
    Snapshot {
        desk: Box<DeskState>,
    },
}

/// Entries appended after which the journal is compacted.
const COMPACT_AFTER: u64 = 20_000;

/// What reading the journal found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) entries: usize,
    /// Lines that were not an entry, before the last line (a cut last line is a crash's).
    pub(crate) unreadable: u64,
}

/// The journal, open for appending.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: BufWriter<File>,
    unsynced: bool,
    /// Entries in the file since its last snapshot.
    entries: u64,
    /// Compact once there are more entries than this.
    compact_after: u64,
}

impl Journal {
    /// Opens (creating) the journal at `path` and replays it into `desk`; returns the
    /// journal and what it replayed. Read as bytes: a crash may cut the last line in the
    /// middle of a character.
    pub(crate) fn open(path: &Path, desk: &mut Desk) -> io::Result<(Self, Replayed)> {
        let mut replayed = Replayed::default();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let last = lines.len().saturating_sub(1);
        for (i, line) in lines.into_iter().enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Entry>(line) {
                Ok(entry) => {
                    replay(desk, entry);
                    replayed.entries += 1;
                }
                // The torn end of a crash: cut below.
                Err(_) if i == last => {}
                Err(_) => replayed.unreadable += 1,
            }
        }
        let file = crate::state::open_appending_lines(path)?;
        let mut journal = Journal {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            unsynced: false,
            entries: replayed.entries as u64,
            compact_after: COMPACT_AFTER,
        };
        journal.compact_if_long(desk)?;
        Ok((journal, replayed))
    }

    /// Compacts the journal when it holds more than `COMPACT_AFTER` entries.
    pub(crate) fn compact_if_long(&mut self, desk: &Desk) -> io::Result<()> {
        if self.entries <= self.compact_after {
            return Ok(());
        }
        self.sync()?;
        let snapshot = Entry::Snapshot {
            desk: Box::new(desk.state()),
        };
        let mut text = serde_json::to_vec(&snapshot).map_err(io::Error::from)?;
        text.push(b'\n');
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("desk.jsonl")
            .to_string();
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        crate::state::checkpoint::write_durably(dir, &name, &text)?;
        self.file = BufWriter::new(crate::state::open_appending_lines(&self.path)?);
        self.entries = 1;
        tracing::info!(bytes = text.len(), "operations journal compacted into one snapshot");
        Ok(())
    }

    /// Appends an entry (durable at the next `sync`).
    pub(crate) fn append(&mut self, entry: &Entry) -> io::Result<()> {
        serde_json::to_writer(&mut self.file, entry).map_err(io::Error::from)?;
        self.file.write_all(b"\n")?;
        self.unsynced = true;
        self.entries += 1;
        Ok(())
    }

    /// Makes everything appended durable.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.flush()?;
            self.file.get_ref().sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }
}

/// Feeds one journaled input to the desk again (what it sends was sent the first time).
fn replay(desk: &mut Desk, entry: Entry) {
    match entry {
        Entry::Warning { warning } => {
            desk.on_warning(&warning);
        }
        Entry::Operation { operation } => {
            // Refused the first time too (journaled only once accepted, but harmless).
            let _ = desk.apply(&operation);
        }
        Entry::Advanced { now_ms, deadlines } => {
            desk.advance(now_ms, deadlines);
        }
        Entry::Snapshot { desk: state } => desk.restore(*state),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    /// A red alert of `device` firing at `at_ms`, its first notification.
    fn firing(alert_id: &str, device: &str, at_ms: i64) -> Warning {
        let mut key = Map::new();
        key.insert("device_id".into(), serde_json::Value::from(device));
        Warning {
            alert_id: alert_id.into(),
            rule: "gas_lel_high".into(),
            status: WarningStatus::Firing,
            level: Level::Red,
            table: "sensor".into(),
            key,
            values: Map::new(),
            window_start: None,
            window_end: None,
            first_breach: format_ms(at_ms),
            detected_at: format_ms(at_ms),
            latency_ms: 0.0,
            description: String::new(),
            transition: 1,
            escalated_from: None,
            marks: Marks::default(),
        }
    }
    use crate::alert::desk::actions::Action;
    use crate::alert::warning::{Marks, WarningStatus};
    use crate::config::operations::OperationsConfig;
    use crate::level::Level;
    use crate::time::format_ms;

    #[test]
    fn replaying_the_journal_rebuilds_the_same_desk_and_a_torn_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desk.jsonl");
        let t0 = 1_768_435_200_000;
        let warning = firing("a", "wp-1", t0);
        let ack = Operation {
            at_ms: t0 + 1_000,
            by: "li".into(),
            action: Action::Ack {
                alert_id: "a".into(),
                comment: Some("on it".into()),
            },
        };
        let mut desk = Desk::new(OperationsConfig::default()).unwrap();
        let (mut journal, replayed) = Journal::open(&path, &mut desk).unwrap();
        assert_eq!(replayed.entries, 0);
        desk.on_warning(&warning);
        journal
            .append(&Entry::Warning {
                warning: Box::new(warning),
            })
            .unwrap();
        desk.apply(&ack).unwrap();
        journal.append(&Entry::Operation { operation: ack }).unwrap();
        let escalated = desk.advance(t0 + 3 * 3_600_000, true);
        assert_eq!(escalated.len(), 1, "the 2 h resolve deadline");
        journal
            .append(&Entry::Advanced {
                now_ms: t0 + 3 * 3_600_000,
                deadlines: true,
            })
            .unwrap();
        journal.sync().unwrap();
        drop(journal);
        // A crash mid-write leaves half a line, here cut inside a character.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all("{\"entry\":\"operation\",\"comment\":\"阀".as_bytes())
            .unwrap();
        file.write_all(&"门".as_bytes()[..1]).unwrap();
        let mut again = Desk::new(OperationsConfig::default()).unwrap();
        let (_, replayed) = Journal::open(&path, &mut again).unwrap();
        assert_eq!(
            replayed,
            Replayed {
                entries: 3,
                unreadable: 0
            }
        );
        let (before, after) = (desk.alert("a").unwrap(), again.alert("a").unwrap());
        assert_eq!(before.history, after.history);
        assert_eq!(before.warning, after.warning);
        assert!(
            again.advance(t0 + 4 * 3_600_000, true).is_empty(),
            "escalated once, before the restart"
        );
        assert!(
            std::fs::read_to_string(&path).unwrap().ends_with("}\n"),
            "the torn line is cut"
        );
    }

    #[test]
    fn a_compacted_journal_is_one_snapshot_that_rebuilds_the_desk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desk.jsonl");
        let t0 = 1_768_435_200_000;
        let mut desk = Desk::new(OperationsConfig::default()).unwrap();
        let (mut journal, _) = Journal::open(&path, &mut desk).unwrap();
        journal.compact_after = 3;
        for (i, device) in ["gas-1", "gas-2", "gas-3"].iter().enumerate() {
            let warning = firing(&format!("a{i}"), device, t0);
            desk.on_warning(&warning);
            journal
                .append(&Entry::Warning {
                    warning: Box::new(warning),
                })
                .unwrap();
        }
        let ack = Operation {
            at_ms: t0 + 60_000,
            by: "li".into(),
            action: Action::Ack {
                alert_id: "a1".into(),
                comment: None,
            },
        };
        desk.apply(&ack).unwrap();
        journal.append(&Entry::Operation { operation: ack }).unwrap();
        desk.advance(t0 + 10 * 60_000, true); // a0 and a2 escalate
        journal.compact_if_long(&desk).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "one snapshot");
        assert!(text.starts_with("{\"entry\":\"snapshot\""));
        let mut again = Desk::new(OperationsConfig::default()).unwrap();
        let (_, replayed) = Journal::open(&path, &mut again).unwrap();
        assert_eq!(replayed.entries, 1);
        for id in ["a0", "a1", "a2"] {
            let (before, after) = (desk.alert(id).unwrap(), again.alert(id).unwrap());
            assert_eq!(before.history, after.history);
            assert_eq!(before.warning, after.warning);
        }
        assert_eq!(desk.stats(), again.stats());
        assert!(
            again.advance(t0 + 11 * 60_000, true).is_empty(),
            "escalated before, not again"
        );
    }
}
