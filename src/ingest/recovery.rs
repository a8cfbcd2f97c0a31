//! Recovery's source: the write-ahead log read back into the decode queues before the live
//! source starts. Records from `replay_from` through the checkpoint's cut refill the open
//! windows (marked `rebuild`: nothing else happens to them); records after the cut —
//! messages and clock ticks — go through the pipeline exactly as they did before the
//! crash, so it computes the same warnings (the sinks skip the ones they already have).

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use crate::flow::{Closed, Ingest, Message};
use crate::metrics::Metrics;
use crate::queue::{Bursts, Handoff};
use crate::state::log::{self, ReadReport, Record};

/// What the log held.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replayed {
    /// Messages read again to refill open windows.
    pub refilled: u64,
    /// Messages (after the checkpoint) run through the pipeline again.
    pub replayed: u64,
    /// The log's end, and what was cut from a torn tail.
    pub report: ReadReport,
}

/// Why the log could not be replayed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoveryError {
    #[error("reading the log: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Closed(#[from] Closed),
}

/// Feeds the log from `replay_from` into the handoff: refill up to `covers_seq`, then
/// replay. With no checkpoint, `covers_seq` is 0 and everything is replayed.
pub(crate) fn replay_log(
    dir: &Path,
    replay_from: u64,
    covers_seq: u64,
    handoff: &Handoff,
    metrics: &Metrics,
) -> Result<Replayed, RecoveryError> {
    let mut replayed = Replayed::default();
    let mut bursts = Bursts::new(handoff);
    let read = log::read_from(dir, replay_from, |record| -> Result<(), Closed> {
        let rebuild = record.seq() <= covers_seq;
        match record {
            Record::Message {
                seq,
                at_ms,
                received_ms,
                topic,
                payload,
                recorded_invalid,
            } => {
                if rebuild {
                    replayed.refilled += 1;
                } else {
                    replayed.replayed += 1;
                    metrics.messages_in.fetch_add(1, Relaxed);
                }
                let msg = Message {
                    at_ms,
                    topic,
                    payload,
                    recorded_invalid,
                    arrived_ns: metrics.now_ns(),
                    received_ms,
                    seq,
                    rebuild,
                };
                let worker = handoff.worker_for(msg.topic.as_bytes());
                bursts.push(handoff, worker, msg)
            }
            // Ticks before the cut are the checkpoint's past: the refill needs none.
            Record::Tick { now_ms, .. } if !rebuild => {
                bursts.flush(handoff)?;
                handoff.broadcast(|| Ingest::Tick { now_ms })
            }
            Record::Tick { .. } => Ok(()),
        }
    })?;
    replayed.report = read?;
    bursts.flush(handoff)?;
    metrics.state.refilled_messages.store(replayed.refilled, Relaxed);
    metrics.state.recovered_messages.store(replayed.replayed, Relaxed);
    Ok(replayed)
}
