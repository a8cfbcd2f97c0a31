//! The desk's journal (`<state>/desk.jsonl`, with `--state`): every input the desk took,
//! in order, one JSON object per line: lifecycle notifications, operator actions, and the
//! clock times whose advance sent something. Replaying it into a new desk rebuilds the same
//! desk (its inputs are deterministic), so acknowledgements, assignments, comments,
//! silences, history and statistics survive a restart or a crash. An operator's action is
//! synced to disk before its answer; notifications at the sink's quiet moments, as the
//! delivery record is. A line cut short by a crash is dropped on reading.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::actions::Operation;
use super::book::Desk;
use crate::alert::warning::Warning;
use crate::time::EpochMs;

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub(crate) enum Entry {
    Warning { warning: Box<Warning> },
    Operation { operation: Operation },
    Advanced { now_ms: EpochMs, deadlines: bool },
}

/// The journal, open for appending.
#[derive(Debug)]
pub(crate) struct Journal {
    file: BufWriter<File>,
    unsynced: bool,
}

impl Journal {
    /// Opens (creating) the journal at `path` and replays it into `desk`; returns the
    /// journal and how many entries it replayed.
    pub(crate) fn open(path: &Path, desk: &mut Desk) -> io::Result<(Self, usize)> {
        let mut replayed = 0;
        if path.exists() {
            let reader = BufReader::new(File::open(path)?);
            for line in reader.lines() {
                let line = line?;
                // A line that does not parse is the torn end of a crash (it is cut below).
                let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
                    continue;
                };
                replay(desk, entry);
                replayed += 1;
            }
        }
        let file = crate::state::open_appending_lines(path)?;
        Ok((
            Journal {
                file: BufWriter::new(file),
                unsynced: false,
            },
            replayed,
        ))
    }

    /// Appends an entry (durable at the next `sync`).
    pub(crate) fn append(&mut self, entry: &Entry) -> io::Result<()> {
        serde_json::to_writer(&mut self.file, entry).map_err(io::Error::from)?;
        self.file.write_all(b"\n")?;
        self.unsynced = true;
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
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
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
        let warning = Warning {
            alert_id: "a".into(),
            rule: "pressure_low".into(),
            status: WarningStatus::Firing,
            level: Level::Red,
            table: "water".into(),
            key: Map::new(),
            values: Map::new(),
            window_start: None,
            window_end: None,
            first_breach: format_ms(t0),
            detected_at: format_ms(t0),
            latency_ms: 0.0,
            description: String::new(),
            transition: 1,
            escalated_from: None,
            marks: Marks::default(),
        };
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
        assert_eq!(replayed, 0);
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
        // A crash mid-write leaves half a line.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"entry\":\"operation\",\"operat").unwrap();
        let mut again = Desk::new(OperationsConfig::default()).unwrap();
        let (_, replayed) = Journal::open(&path, &mut again).unwrap();
        assert_eq!(replayed, 3);
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
}
