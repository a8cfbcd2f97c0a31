//! The record of delivered notifications: one line `<alert_id> <number> <after_cut>` per
//! notification every sink has taken, appended once the sinks have it (so a crash can only
//! make a notification be sent twice with the same identity, never lost). `after_cut` is
//! the checkpoint whose cut the notification came after: recovering from checkpoint `c`
//! recomputes exactly the notifications with `after_cut >= c`, so when a checkpoint is
//! written the older lines go.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A notification's identity: the alert and its notification number.
pub(crate) type Identity = (String, u32);

/// The delivered notifications since the oldest checkpoint kept.
#[derive(Debug)]
pub(crate) struct Deliveries {
    path: PathBuf,
    file: BufWriter<File>,
    /// (identity, after_cut) of every line, in order.
    lines: Vec<(Identity, u64)>,
    delivered: HashSet<Identity>,
}

impl Deliveries {
    /// Opens the record, reading what earlier runs delivered; a torn last line is dropped.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut lines = Vec::new();
        for line in text.lines() {
            let mut parts = line.split(' ');
            let parsed = (|| {
                let id = parts.next()?.to_string();
                let number = parts.next()?.parse().ok()?;
                let after = parts.next()?.parse().ok()?;
                Some(((id, number), after))
            })();
            if let Some(entry) = parsed {
                lines.push(entry);
            }
        }
        let delivered = lines.iter().map(|(id, _)| id.clone()).collect();
        let mut deliveries = Deliveries {
            path: path.to_path_buf(),
            file: BufWriter::new(OpenOptions::new().create(true).append(true).open(path)?),
            lines,
            delivered,
        };
        // Rewritten whole, so a torn line never sits in front of new ones.
        deliveries.rewrite()?;
        Ok(deliveries)
    }

    /// Whether this notification was delivered before.
    pub(crate) fn contains(&self, id: &Identity) -> bool {
        self.delivered.contains(id)
    }

    /// Notes delivered notifications (written now; durable at the next `sync`).
    pub(crate) fn record(&mut self, delivered: impl IntoIterator<Item = (Identity, u64)>) -> io::Result<()> {
        let delivered: Vec<(Identity, u64)> = delivered.into_iter().collect();
        let mut text = String::new();
        for ((id, number), after) in &delivered {
            text.push_str(&format!("{id} {number} {after}\n"));
        }
        self.file.write_all(text.as_bytes())?;
        self.file.flush()?;
        for (id, after) in delivered {
            self.delivered.insert(id.clone());
            self.lines.push((id, after));
        }
        Ok(())
    }

    /// Forgets notifications from before checkpoint `oldest_kept`'s cut: no recovery
    /// recomputes them any more.
    pub(crate) fn prune(&mut self, oldest_kept: u64) -> io::Result<()> {
        self.lines.retain(|(_, after)| *after >= oldest_kept);
        self.delivered = self.lines.iter().map(|(id, _)| id.clone()).collect();
        self.rewrite()
    }

    /// Makes the record durable (before a checkpoint).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }

    /// How many notifications are on record.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lines.len()
    }

    fn rewrite(&mut self) -> io::Result<()> {
        let mut text = String::new();
        for ((id, number), after) in &self.lines {
            text.push_str(&format!("{id} {number} {after}\n"));
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "deliveries.log".to_string());
        super::checkpoint::write_durably(dir, &name, text.as_bytes())?;
        self.file = BufWriter::new(OpenOptions::new().append(true).open(&self.path)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_survive_reopening_and_a_torn_line_and_are_pruned_by_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("deliveries.log");
        let mut d = Deliveries::open(&path).expect("opened");
        d.record([(("a1".to_string(), 1), 0), (("a1".to_string(), 2), 3)])
            .expect("recorded");
        drop(d);
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(b"b7 1").expect("torn line");
        drop(file);
        let mut d = Deliveries::open(&path).expect("reopened");
        assert!(d.contains(&("a1".to_string(), 1)) && d.contains(&("a1".to_string(), 2)));
        assert_eq!(d.len(), 2);
        d.prune(3).expect("pruned");
        assert!(!d.contains(&("a1".to_string(), 1)) && d.contains(&("a1".to_string(), 2)));
        d.record([(("b7".to_string(), 1), 4)]).expect("recorded");
        let d = Deliveries::open(&path).expect("reopened");
        assert_eq!(d.len(), 2);
        assert!(d.contains(&("b7".to_string(), 1)));
    }
}
