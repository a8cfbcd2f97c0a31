//! The sources a run reads on its own thread: the live broker, and recorded ones replayed
//! (the demo, a file, a channel), with broken fixture lines dead-lettered.

use super::{RunError, Source};
use crate::flow::DeadLetter;
use crate::ingest::fixture::{FixtureError, FixtureReader, LineRead, bad_line_letter};
use crate::ingest::mqtt::{Logged, MqttError, MqttSource, subscribe};
use crate::ingest::replay::{Downstream, ReplayError, Speed, replay};
use crate::metrics::Metrics;
use crate::queue::Handoff;
use crate::shutdown::Shutdown;

/// Reads the live broker until the source ends.
pub(super) fn from_broker(
    source: &MqttSource,
    handoff: &Handoff,
    metrics: &Metrics,
    shutdown: &Shutdown,
    logged: Option<Logged>,
) -> Result<(), RunError> {
    match subscribe(source, handoff, metrics, shutdown, logged) {
        Ok(_) => Ok(()),
        Err(MqttError::Setup(e)) => Err(RunError::Mqtt(e)),
        Err(MqttError::Closed(_)) => Err(RunError::DecodeStopped),
    }
}

/// Replays a recorded source until it ends, skipping the first `skip` messages.
pub(super) fn replay_source(
    source: &Source,
    downstream: &mut dyn Downstream,
    speed: Speed,
    metrics: &Metrics,
    dead_letters: &crossbeam_channel::Sender<DeadLetter>,
    skip: u64,
) -> Result<(), RunError> {
    let mut reader = match source {
        Source::Demo => FixtureReader::demo()?,
        Source::File(path) => FixtureReader::open(path)?,
        Source::Channel(rx) => {
            let mut messages = rx.iter().map(|msg| Ok(LineRead::Message(msg)));
            return replay_all(&mut messages, downstream, speed, metrics, dead_letters, skip).map_err(RunError::from);
        }
        Source::Mqtt(_) | Source::Cluster(_) | Source::Partition(_) => {
            return Err(RunError::Internal("a live source is not a replay".to_string()));
        }
    };
    reader.cut_payloads(downstream.takes_cut_lines());
    replay_all(&mut reader.reads(), downstream, speed, metrics, dead_letters, skip).map_err(RunError::from)
}

impl From<ReplayError> for RunError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Fixture(e) => RunError::Fixture(e),
            ReplayError::Closed(_) => RunError::DecodeStopped,
        }
    }
}

/// Replays a fixture; a line whose envelope is broken is dead-lettered and skipped.
fn replay_all(
    reads: &mut dyn Iterator<Item = Result<LineRead, FixtureError>>,
    downstream: &mut dyn Downstream,
    speed: Speed,
    metrics: &Metrics,
    dead_letters: &crossbeam_channel::Sender<DeadLetter>,
    skip: u64,
) -> Result<(), ReplayError> {
    let mut on_bad_line = |error: FixtureError| {
        metrics.messages_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let letter = bad_line_letter(&error);
        metrics.add_rejected(letter.reason, 1);
        let _ = dead_letters.send(letter);
    };
    replay(reads, downstream, speed, metrics, skip, &mut on_bad_line).map(|_| ())
}
