//! The write-ahead log: every accepted message (topic, payload, arrival) and every clock
//! tick, in the order the pipeline saw them, in segment files under `<state>/log/`. A
//! segment is named by the sequence number of its first record; records are
//! `[body length u32][crc32 of body u32][body]`, little-endian, where the body is
//! `[kind u8][seq u64][time i64]` followed, for messages, by
//! `[received wall ms i64][topic length u16][topic][payload]`.
//! Appends go to a buffer; `commit` writes the buffer and `fdatasync`s it (group commit).
//! A record whose length or checksum does not hold (a crash mid-write) ends the log: the
//! reader cuts the segment there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A segment is closed and a new one started once it holds this much.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Header bytes before each record body.
const HEADER: usize = 8;
/// The largest body a record may have (a payload is at most `engine.max_payload_bytes`,
/// but the log does not know the config; this only guards against a corrupt length).
const MAX_BODY: u32 = 64 * 1024 * 1024;
const KIND_MESSAGE: u8 = 1;
const KIND_TICK: u8 = 2;
/// A recorded payload that was not JSON (a fixture's `raw`): dead-lettered on replay too.
const KIND_RAW_MESSAGE: u8 = 3;

/// One record of the log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Message {
        seq: u64,
        at_ms: i64,
        received_ms: i64,
        topic: String,
        payload: bytes::Bytes,
        recorded_invalid: bool,
    },
    Tick {
        seq: u64,
        now_ms: i64,
    },
}

impl Record {
    pub(crate) fn seq(&self) -> u64 {
        match self {
            Record::Message { seq, .. } | Record::Tick { seq, .. } => *seq,
        }
    }
}

/// The segment files of a log directory, by first sequence number.
pub(crate) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort_by_key(|(first, _)| *first);
    Ok(found)
}

/// Bytes the log's segments take on disk.
pub(crate) fn size_bytes(dir: &Path) -> u64 {
    segments(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, path)| fs::metadata(path).ok())
        .map(|m| m.len())
        .sum()
}

/// Deletes the segments whose every record comes before `keep_from` (the next segment
/// starts at or below it). Returns how many went.
pub(crate) fn delete_before(dir: &Path, keep_from: u64) -> io::Result<usize> {
    let all = segments(dir)?;
    let mut deleted = 0;
    for pair in all.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first <= keep_from {
            fs::remove_file(path)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Appends records and makes them durable in groups.
#[derive(Debug)]
pub(crate) struct LogWriter {
    dir: PathBuf,
    file: File,
    written: u64,
    next_seq: u64,
    buffer: Vec<u8>,
    /// Sequence number of the last record made durable.
    committed: u64,
}

impl LogWriter {
    /// Starts a new segment in `dir` whose first record will be `next_seq`.
    pub(crate) fn create(dir: &Path, next_seq: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let file = new_segment(dir, next_seq)?;
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            written: 0,
            next_seq,
            buffer: Vec::with_capacity(1 << 20),
            committed: next_seq.saturating_sub(1),
        })
    }

    /// The sequence number the next record gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes appended and not yet committed.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Appends a message; returns its sequence number. Nothing is durable before `commit`.
    pub(crate) fn append_message(
        &mut self,
        at_ms: i64,
        received_ms: i64,
        topic: &str,
        payload: &[u8],
        recorded_invalid: bool,
    ) -> u64 {
        let topic = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
        let body_len = 1 + 8 + 8 + 8 + 2 + topic.len() + payload.len();
        let kind = if recorded_invalid {
            KIND_RAW_MESSAGE
        } else {
            KIND_MESSAGE
        };
        let seq = self.start_record(kind, body_len, at_ms);
        self.buffer.extend_from_slice(&received_ms.to_le_bytes());
        self.buffer.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        self.buffer.extend_from_slice(topic);
        self.buffer.extend_from_slice(payload);
        self.finish_record(body_len);
        seq
    }

    /// Appends a clock tick; returns its sequence number.
    pub(crate) fn append_tick(&mut self, now_ms: i64) -> u64 {
        let body_len = 1 + 8 + 8;
        let seq = self.start_record(KIND_TICK, body_len, now_ms);
        self.finish_record(body_len);
        seq
    }

    fn start_record(&mut self, kind: u8, body_len: usize, time: i64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.buffer.extend_from_slice(&(body_len as u32).to_le_bytes());
        self.buffer.extend_from_slice(&[0; 4]);
        self.buffer.push(kind);
        self.buffer.extend_from_slice(&seq.to_le_bytes());
        self.buffer.extend_from_slice(&time.to_le_bytes());
        seq
    }

    /// Fills in the checksum of the record just appended.
    fn finish_record(&mut self, body_len: usize) {
        let start = self.buffer.len() - body_len;
        let crc = crc32fast::hash(&self.buffer[start..]);
        self.buffer[start - 4..start].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes what was appended and waits until it is on disk (`fdatasync`); returns the
    /// last durable sequence number. On an error (a full disk) nothing appended since the
    /// last commit counts as durable; the buffer is kept and the next call tries again.
    pub(crate) fn commit(&mut self) -> io::Result<u64> {
        if self.buffer.is_empty() {
            return Ok(self.committed);
        }
        let at = self.written;
        if let Err(e) = self.file.write_all(&self.buffer).and_then(|()| self.file.sync_data()) {
            // A partial write must not stay in front of the retry: cut back to the last good end.
            let _ = self.file.set_len(at);
            let _ = self.file.seek(SeekFrom::Start(at));
            return Err(e);
        }
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        self.committed = self.next_seq - 1;
        if self.written >= SEGMENT_BYTES {
            self.file = new_segment(&self.dir, self.next_seq)?;
            self.written = 0;
        }
        Ok(self.committed)
    }
}

fn new_segment(dir: &Path, first_seq: u64) -> io::Result<File> {
    let path = dir.join(format!("{first_seq:020}.wal"));
    let file = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    // The new name must survive a machine crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// What reading the log found besides its records.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ReadReport {
    /// Bytes cut from the end of a segment (a torn or corrupt record and what followed).
    pub cut_bytes: u64,
    /// The segment that was cut, if one was.
    pub cut_segment: Option<PathBuf>,
    /// The sequence number after the last good record.
    pub next_seq: u64,
}

/// Reads every record with `seq >= from`, in order, calling `each` for each. A torn or
/// corrupt record ends the log: its segment is cut there and later segments are removed
/// (they cannot follow a gap). `each` returning an error stops the read.
pub(crate) fn read_from<E>(
    dir: &Path,
    from: u64,
    mut each: impl FnMut(Record) -> Result<(), E>,
) -> Result<Result<ReadReport, E>, io::Error> {
    let all = segments(dir)?;
    let mut report = ReadReport {
        next_seq: from,
        ..ReadReport::default()
    };
    let mut broken_at: Option<usize> = None;
    for (index, (first, path)) in all.iter().enumerate() {
        // Skip segments that end before `from`.
        if all.get(index + 1).is_some_and(|(next, _)| *next <= from) {
            continue;
        }
        let mut expected = *first;
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            match decode(&bytes[offset..], expected) {
                Some((record, used)) => {
                    offset += used;
                    expected += 1;
                    report.next_seq = report.next_seq.max(expected);
                    if record.seq() >= from
                        && let Err(e) = each(record)
                    {
                        return Ok(Err(e));
                    }
                }
                None if index + 1 < all.len() => {
                    // Only the last segment can end in a torn write: damage before it would
                    // drop acknowledged messages, so recovery stops and says where.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "log segment {} is damaged at byte {offset} (record {expected}), before the last segment; refusing to drop the acknowledged messages after it",
                            path.display()
                        ),
                    ));
                }
                None => {
                    report.cut_bytes += (bytes.len() - offset) as u64;
                    report.cut_segment = Some(path.clone());
                    let file = OpenOptions::new().write(true).open(path)?;
                    file.set_len(offset as u64)?;
                    file.sync_all()?;
                    broken_at = Some(index);
                    break;
                }
            }
        }
        if broken_at.is_some() {
            break;
        }
    }
    if let Some(index) = broken_at {
        for (_, later) in &all[index + 1..] {
            report.cut_bytes += fs::metadata(later).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(later)?;
        }
    }
    Ok(Ok(report))
}

/// One record from the front of `bytes`, when it is whole, its checksum holds and its
/// sequence number is the one expected; with the bytes it used.
fn decode(bytes: &[u8], expected_seq: u64) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len > MAX_BODY || (len as usize) < 17 {
        return None;
    }
    let body = bytes.get(HEADER..HEADER + len as usize)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let kind = body[0];
    let seq = u64::from_le_bytes(body[1..9].try_into().ok()?);
    let time = i64::from_le_bytes(body[9..17].try_into().ok()?);
    if seq != expected_seq {
        return None;
    }
    let record = match kind {
        KIND_TICK => Record::Tick { seq, now_ms: time },
        KIND_MESSAGE | KIND_RAW_MESSAGE => {
            let received_ms = i64::from_le_bytes(body.get(17..25)?.try_into().ok()?);
            let topic_len = u16::from_le_bytes(body.get(25..27)?.try_into().ok()?) as usize;
            let topic = std::str::from_utf8(body.get(27..27 + topic_len)?).ok()?.to_string();
            let payload = bytes::Bytes::copy_from_slice(body.get(27 + topic_len..)?);
            Record::Message {
                seq,
                at_ms: time,
                received_ms,
                topic,
                payload,
                recorded_invalid: kind == KIND_RAW_MESSAGE,
            }
        }
        _ => return None,
    };
    Some((record, HEADER + len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(dir: &Path, from: u64) -> (Vec<Record>, ReadReport) {
        let mut records = Vec::new();
        let report = read_from::<()>(dir, from, |r| {
            records.push(r);
            Ok(())
        })
        .expect("readable")
        .expect("no stop");
        (records, report)
    }

    #[test]
    fn records_come_back_in_order_from_any_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = LogWriter::create(dir.path(), 1).expect("created");
        assert_eq!(log.append_message(100, 7, "city/a/water/w1", br#"{"ts":1}"#, false), 1);
        assert_eq!(log.append_tick(1_000), 2);
        assert_eq!(log.append_message(1_001, 8, "city/a/gas/g1", b"not json", true), 3);
        assert_eq!(log.commit().expect("committed"), 3);
        let (records, report) = read_all(dir.path(), 1);
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0],
            Record::Message {
                seq: 1,
                at_ms: 100,
                received_ms: 7,
                topic: "city/a/water/w1".to_string(),
                payload: bytes::Bytes::from_static(br#"{"ts":1}"#),
                recorded_invalid: false,
            }
        );
        assert_eq!(records[1], Record::Tick { seq: 2, now_ms: 1_000 });
        assert_eq!((report.next_seq, report.cut_bytes), (4, 0));
        let (later, _) = read_all(dir.path(), 3);
        assert_eq!(later.iter().map(Record::seq).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = LogWriter::create(dir.path(), 1).expect("created");
        log.append_message(1, 1, "city/a/water/w1", b"{}", false);
        log.append_message(2, 2, "city/a/water/w1", b"{}", false);
        log.commit().expect("committed");
        drop(log);
        let (_, path) = segments(dir.path()).expect("listed").remove(0);
        let whole = fs::metadata(&path).expect("exists").len();
        // Half a record more, as a crash mid-write leaves it.
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&[40, 0, 0, 0, 1, 2, 3]).expect("written");
        drop(file);
        let (records, report) = read_all(dir.path(), 1);
        assert_eq!(records.len(), 2);
        assert_eq!((report.cut_bytes, report.next_seq), (7, 3));
        assert_eq!(fs::metadata(&path).expect("exists").len(), whole);
        // A flipped byte inside the second record: it and what follows go.
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).expect("written");
        let (records, report) = read_all(dir.path(), 1);
        assert_eq!(records.len(), 1);
        assert_eq!(report.next_seq, 2);
        let mut log = LogWriter::create(dir.path(), report.next_seq).expect("created");
        assert_eq!(log.append_tick(5), 2);
        log.commit().expect("committed");
        let (records, _) = read_all(dir.path(), 1);
        assert_eq!(records.iter().map(Record::seq).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn a_full_disk_fails_the_commit_and_nothing_counts_as_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The segment is /dev/full: every write fails with "no space left on device".
        std::os::unix::fs::symlink("/dev/full", dir.path().join(format!("{:020}.wal", 1))).expect("symlink");
        let mut log = LogWriter::create(dir.path(), 1).expect("created");
        log.append_message(1, 1, "city/a/water/w1", b"{}", false);
        let error = log.commit().expect_err("the disk is full");
        assert_eq!(error.raw_os_error(), Some(28), "ENOSPC: {error}");
        // Still waiting to be written: the caller retries and acks nothing meanwhile.
        assert!(log.pending_bytes() > 0);
        assert_eq!(log.committed, 0);
        assert!(log.commit().is_err());
    }

    #[test]
    fn segments_before_a_position_are_deleted_but_never_the_one_holding_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        for first in [1u64, 10, 20] {
            let mut log = LogWriter::create(dir.path(), first).expect("created");
            log.append_tick(first as i64);
            log.commit().expect("committed");
        }
        assert_eq!(delete_before(dir.path(), 15).expect("deleted"), 1);
        let left: Vec<u64> = segments(dir.path()).expect("listed").iter().map(|(f, _)| *f).collect();
        assert_eq!(left, vec![10, 20]);
    }
}
