//! Checkpoint files and the manifest that names the good ones. A checkpoint is one file:
//! a magic line, the JSON of every rule's snapshot, the rows of open sessions as Arrow IPC
//! (one stream per session rule), and a CRC-32 of everything before it. It is written to a
//! temporary name, fsynced and renamed; then `MANIFEST.json` (written the same way) names
//! it beside the one before, so a checkpoint that turns out unreadable falls back to the
//! previous one. What the checkpoint does not hold — the rows of open windows — recovery
//! reads again from the log, from `replay_from`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use super::snapshot::{KindSnapshot, RuleSnapshot};

const MAGIC: &[u8] = b"CITYOPS-CHECKPOINT 1\n";
const MANIFEST: &str = "MANIFEST.json";
/// Checkpoints the manifest keeps: the newest and the one before (the fallback).
const KEEP: usize = 2;

/// The state of every rule at one cut of the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// Checkpoints are numbered from 1, across restarts.
    pub number: u64,
    /// The last log position whose message is in this state.
    pub covers_seq: u64,
    /// Where recovery starts reading the log to refill open windows (at most
    /// `covers_seq + 1`).
    pub replay_from: u64,
    /// Messages logged up to the cut, over the state directory's life.
    pub messages: u64,
    /// When it was taken (epoch ms).
    pub taken_ms: i64,
    /// A cluster partition's checkpoint: the next whole second its feed ticks at (see
    /// `Cut::next_tick_ms`).
    #[serde(default)]
    pub next_tick_ms: Option<i64>,
    pub rules: Vec<RuleSnapshot>,
}

impl Checkpoint {
    /// The earliest log position any open window needs, or the one after the cut.
    pub(crate) fn replay_from(covers_seq: u64, rules: &[RuleSnapshot]) -> u64 {
        rules
            .iter()
            .filter_map(|r| match &r.kind {
                KindSnapshot::Window(w) => w.open.iter().filter_map(|o| o.first_seq).min(),
                _ => None,
            })
            .chain([covers_seq + 1])
            .min()
            .unwrap_or(covers_seq + 1)
    }
}

/// One checkpoint the manifest names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ManifestEntry {
    pub file: String,
    pub number: u64,
    pub covers_seq: u64,
    pub replay_from: u64,
    pub bytes: u64,
    pub taken_ms: i64,
}

/// The good checkpoints, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub checkpoints: Vec<ManifestEntry>,
}

impl Manifest {
    /// Reads `<dir>/MANIFEST.json`; a missing one is empty.
    pub(crate) fn read(dir: &Path) -> Result<Self, String> {
        let path = dir.join(MANIFEST);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The log position from which every kept checkpoint can recover.
    pub(crate) fn keep_log_from(&self) -> Option<u64> {
        self.checkpoints.iter().map(|c| c.replay_from).min()
    }

    /// The newest checkpoint.
    pub(crate) fn newest(&self) -> Option<&ManifestEntry> {
        self.checkpoints.last()
    }
}

/// Writes a checkpoint into `dir` and makes the manifest name it (keeping the one before);
/// deletes checkpoint files the manifest no longer names. Returns the new manifest.
pub(crate) fn write(dir: &Path, checkpoint: &Checkpoint) -> Result<Manifest, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bytes = encode(checkpoint)?;
    let name = format!("checkpoint-{:020}.bin", checkpoint.number);
    write_durably(dir, &name, &bytes).map_err(|e| format!("writing {}: {e}", dir.join(&name).display()))?;
    let mut manifest = Manifest::read(dir).unwrap_or_default();
    manifest.checkpoints.push(ManifestEntry {
        file: name,
        number: checkpoint.number,
        covers_seq: checkpoint.covers_seq,
        replay_from: checkpoint.replay_from,
        bytes: bytes.len() as u64,
        taken_ms: checkpoint.taken_ms,
    });
    let excess = manifest.checkpoints.len().saturating_sub(KEEP);
    manifest.checkpoints.drain(..excess);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    write_durably(dir, MANIFEST, &json).map_err(|e| format!("writing {}: {e}", dir.join(MANIFEST).display()))?;
    // Only now, with the manifest durable, may older files go.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let named = manifest.checkpoints.iter().any(|c| c.file == name);
            if name.starts_with("checkpoint-") && !named {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(manifest)
}

/// Reads the newest checkpoint that is whole, trying older ones when it is not; with the
/// problems met on the way (a corrupt newest checkpoint is worth a loud warning).
pub(crate) fn read_newest(dir: &Path) -> (Option<Checkpoint>, Vec<String>) {
    let mut problems = Vec::new();
    let mut candidates: Vec<PathBuf> = match Manifest::read(dir) {
        Ok(manifest) => manifest.checkpoints.iter().map(|c| dir.join(&c.file)).collect(),
        Err(e) => {
            problems.push(format!("unreadable manifest ({e}); looking at every checkpoint file"));
            Vec::new()
        }
    };
    if candidates.is_empty() {
        // No manifest (or a broken one): every checkpoint file, oldest first.
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("checkpoint-") && n.ends_with(".bin"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        candidates = found;
    }
    for path in candidates.iter().rev() {
        match fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| decode(&bytes))
        {
            Ok(checkpoint) => return (Some(checkpoint), problems),
            Err(e) => problems.push(format!("checkpoint {} is unusable: {e}", path.display())),
        }
    }
    (None, problems)
}

/// Writes `bytes` to `dir/name` so that after a crash the name holds either the old
/// content or all of the new: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

pub(crate) fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(checkpoint).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(json.len() + 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    let sessions: Vec<&Vec<RecordBatch>> = checkpoint
        .rules
        .iter()
        .filter_map(|r| match &r.kind {
            KindSnapshot::Session(s) => Some(&s.rows),
            _ => None,
        })
        .collect();
    out.extend_from_slice(&(sessions.len() as u64).to_le_bytes());
    for rows in sessions {
        let mut ipc = Vec::new();
        if let Some(first) = rows.first() {
            let mut writer = StreamWriter::try_new(&mut ipc, &first.schema()).map_err(|e| e.to_string())?;
            for batch in rows {
                writer.write(batch).map_err(|e| e.to_string())?;
            }
            writer.finish().map_err(|e| e.to_string())?;
        }
        out.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
        out.extend_from_slice(&ipc);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let body_len = bytes.len().checked_sub(4).ok_or("too short")?;
    let (body, crc) = bytes.split_at(body_len);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "too short")?);
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch (torn or corrupt file)".to_string());
    }
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("not a cityops checkpoint (or another format version)")?;
    let mut cursor = Cursor { bytes: rest, at: 0 };
    let json_len = cursor.u64()? as usize;
    let mut checkpoint: Checkpoint = serde_json::from_slice(cursor.take(json_len)?).map_err(|e| e.to_string())?;
    let streams = cursor.u64()? as usize;
    let mut session_rules = checkpoint.rules.iter_mut().filter_map(|r| match &mut r.kind {
        KindSnapshot::Session(s) => Some(s),
        _ => None,
    });
    for _ in 0..streams {
        let len = cursor.u64()? as usize;
        let ipc = cursor.take(len)?;
        let rows: Vec<RecordBatch> = if ipc.is_empty() {
            Vec::new()
        } else {
            StreamReader::try_new(ipc, None)
                .map_err(|e| e.to_string())?
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?
        };
        let sessions = session_rules.next().ok_or("more session streams than session rules")?;
        sessions.rows = rows;
    }
    Ok(checkpoint)
}

/// Reads fixed-size fields from the front of a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("truncated")?;
        let part = &self.bytes[self.at..end];
        self.at = end;
        Ok(part)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "truncated")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::snapshot::{JudgeFromSnapshot, OpenWindowSnapshot, WindowsSnapshot};

    fn checkpoint(number: u64, first_seq: Option<u64>) -> Checkpoint {
        let rules = vec![RuleSnapshot {
            rule: "water/pressure_low".to_string(),
            version: "v1".to_string(),
            table: "water".to_string(),
            description: String::new(),
            key_columns: vec!["device_id".to_string()],
            errors: 0,
            last_event_ms: Some(5),
            judge_from: JudgeFromSnapshot::Start,
            alerts: Vec::new(),
            last_arrivals: vec![(3, Some(9))],
            kind: KindSnapshot::Window(WindowsSnapshot {
                max_ts: Some(5),
                closed_through: Some(0),
                judged_through: Some(0),
                row_max_ts: Some(5),
                open: vec![OpenWindowSnapshot { end: 60_000, first_seq }],
            }),
        }];
        Checkpoint {
            number,
            covers_seq: number * 100,
            replay_from: Checkpoint::replay_from(number * 100, &rules),
            messages: number * 90,
            taken_ms: 1,
            next_tick_ms: None,
            rules,
        }
    }

    #[test]
    fn the_newest_whole_checkpoint_is_read_and_a_corrupt_one_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &checkpoint(1, Some(40))).expect("written");
        let manifest = write(dir.path(), &checkpoint(2, None)).expect("written");
        assert_eq!(
            manifest.checkpoints.iter().map(|c| c.number).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(manifest.keep_log_from(), Some(40));
        let (read, problems) = read_newest(dir.path());
        assert_eq!((read.map(|c| c.number), problems.len()), (Some(2), 0));
        // A third pushes the first out, file and all.
        write(dir.path(), &checkpoint(3, Some(250))).expect("written");
        assert!(!dir.path().join("checkpoint-00000000000000000001.bin").exists());
        // Flip a byte of the newest: the one before is used, and the problem named.
        let newest = dir.path().join("checkpoint-00000000000000000003.bin");
        let mut bytes = fs::read(&newest).expect("read");
        bytes[40] ^= 1;
        fs::write(&newest, bytes).expect("written");
        let (read, problems) = read_newest(dir.path());
        assert_eq!(read.map(|c| c.number), Some(2));
        assert!(problems[0].contains("checksum"), "{problems:?}");
    }
}
