//! The webhook's on-disk spool: every warning waits here, one file each, until the receiver
//! has taken it, so warnings survive a receiver outage and a cityops restart. Files are
//! named by a sequence number, so delivery keeps their order; each is written to a
//! temporary name and renamed, so a crash never leaves half a warning. The spool is bounded
//! in bytes; the caller counts and logs what does not fit.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A directory of pending payloads.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    next_seq: u64,
    /// (sequence, path, bytes) in delivery order.
    pending: std::collections::VecDeque<(u64, PathBuf, u64)>,
    bytes: u64,
}

impl Spool {
    /// Opens (or creates) `dir`, picking up what an earlier run left there.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut pending = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                let bytes = fs::metadata(&path)?.len();
                pending.push((seq, path, bytes));
            }
        }
        pending.sort_by_key(|(seq, _, _)| *seq);
        let next_seq = pending.last().map_or(0, |(seq, _, _)| seq + 1);
        let bytes = pending.iter().map(|(_, _, b)| b).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            next_seq,
            pending: pending.into(),
            bytes,
        })
    }

    /// Stores a payload at the end. `Ok(false)` when the spool is full (nothing stored).
    pub(crate) fn push(&mut self, payload: &[u8]) -> io::Result<bool> {
        let size = payload.len() as u64;
        if self.bytes + size > self.max_bytes {
            return Ok(false);
        }
        let seq = self.next_seq;
        let path = self.dir.join(format!("{seq:016}.json"));
        let temporary = self.dir.join(format!(".{seq:016}.tmp"));
        let mut file = fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, payload)?;
        // Synced before the rename: a spooled warning survives a machine crash too.
        file.sync_data()?;
        drop(file);
        fs::rename(&temporary, &path)?;
        self.next_seq += 1;
        self.bytes += size;
        self.pending.push_back((seq, path, size));
        Ok(true)
    }

    /// Makes the names of the files spooled so far durable (the directory synced).
    pub(crate) fn sync(&self) -> io::Result<()> {
        fs::File::open(&self.dir)?.sync_all()
    }

    /// The oldest payload, with its path for `remove`.
    pub(crate) fn oldest(&self) -> io::Result<Option<(PathBuf, Vec<u8>)>> {
        match self.pending.front() {
            Some((_, path, _)) => Ok(Some((path.clone(), fs::read(path)?))),
            None => Ok(None),
        }
    }

    /// Drops a delivered payload.
    pub(crate) fn remove(&mut self, path: &Path) -> io::Result<()> {
        if let Some(i) = self.pending.iter().position(|(_, p, _)| p == path) {
            let (_, path, size) = self.pending.remove(i).unwrap_or_default();
            self.bytes = self.bytes.saturating_sub(size);
            fs::remove_file(path)?;
        }
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_survive_a_reopen_in_order_and_the_bound_holds() {
        let dir = tempfile::tempdir().expect("dir");
        let mut spool = Spool::open(dir.path(), 10).expect("opens");
        assert!(spool.push(b"aaaa").expect("stored"));
        assert!(spool.push(b"bbbb").expect("stored"));
        assert!(!spool.push(b"cccc").expect("full, not stored"));
        drop(spool);
        let mut spool = Spool::open(dir.path(), 10).expect("reopens");
        assert_eq!(spool.len(), 2);
        let (path, payload) = spool.oldest().expect("reads").expect("one");
        assert_eq!(payload, b"aaaa");
        spool.remove(&path).expect("removed");
        assert!(spool.push(b"dd").expect("room again"));
        let (_, payload) = spool.oldest().expect("reads").expect("one");
        assert_eq!(payload, b"bbbb");
        assert_eq!(spool.len(), 2);
    }
}
