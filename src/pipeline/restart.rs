//! Starting on a state directory: open and check it, read its newest usable checkpoint,
//! replay the log into the pipeline (open windows refilled, everything after the cut run
//! again), start the log stage for new messages, and work out what the checkpoint implies
//! beyond the rules still running (tables' last arrivals, resolutions of removed rules).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::{RunError, StateOptions, io};
use crate::alert::lifecycle::{CleanStep, FireAfter, Lifecycle, Policy};
use crate::alert::warning::{RuleInfo, Warning};
use crate::ingest::mqtt::RecentMessages;
use crate::ingest::recovery::{RecoveryError, replay_log};
use crate::ingest::wal::{Ack, Intake, WalSettings, WalStage};
use crate::metrics::Metrics;
use crate::queue::Handoff;
use crate::rules::worker::DetectionClock;
use crate::shutdown::Shutdown;
use crate::state::checkpoint::{self, Checkpoint};
use crate::state::log::{self, LogWriter, Record};
use crate::state::snapshot::RuleSnapshot;
use crate::state::{StateDir, StateError};
use crate::time::wall_now_ms;

/// A state directory opened for a run, with the checkpoint it starts from.
pub(super) struct OpenState {
    pub(super) dir: StateDir,
    pub(super) checkpoint: Option<Checkpoint>,
    checkpoint_interval: Duration,
    /// The highest checkpoint number written so far.
    last_number: u64,
}

/// Opens the state directory and reads its newest usable checkpoint; refuses a directory
/// whose state cannot be rebuilt.
pub(super) fn open_state(options: &StateOptions) -> Result<OpenState, RunError> {
    let dir = StateDir::open(&options.dir)?;
    let (checkpoint, problems) = checkpoint::read_newest(&dir.checkpoint_dir());
    for problem in &problems {
        tracing::error!(dir = %options.dir.display(), "{problem}; falling back to the newest usable checkpoint (if this recurs, check the state directory's disk for errors)");
    }
    if checkpoint.is_none() {
        let log_start = log::segments(&dir.log_dir())
            .map_err(|source| StateError::Io {
                dir: options.dir.clone(),
                source,
            })?
            .first()
            .map(|(first, _)| *first);
        if log_start.is_some_and(|first| first > 1) {
            return Err(StateError::Unrecoverable {
                dir: options.dir.clone(),
                problems: if problems.is_empty() {
                    "no checkpoint".to_string()
                } else {
                    problems.join("; ")
                },
            }
            .into());
        }
    }
    // Numbers go on from the highest ever written, even past an unusable checkpoint.
    let last_number = checkpoint::Manifest::read(&dir.checkpoint_dir())
        .ok()
        .and_then(|m| m.newest().map(|n| n.number))
        .into_iter()
        .chain(checkpoint.as_ref().map(|c| c.number))
        .max()
        .unwrap_or(0);
    if !problems.is_empty() {
        // The manifest keeps only what was usable, so the next fallback is a good one.
        let usable = checkpoint.as_ref().map_or(0, |c| c.number);
        if let Ok(mut manifest) = checkpoint::Manifest::read(&dir.checkpoint_dir()) {
            manifest.checkpoints.retain(|c| c.number <= usable);
            if let Ok(json) = serde_json::to_vec_pretty(&manifest) {
                let _ = checkpoint::write_durably(&dir.checkpoint_dir(), "MANIFEST.json", &json);
            }
        }
    }
    Ok(OpenState {
        dir,
        checkpoint,
        checkpoint_interval: options.checkpoint_interval,
        last_number,
    })
}

/// What recovery hands the live source.
pub(super) struct Recovered {
    pub(super) intake: crossbeam_channel::Sender<Intake>,
    pub(super) stage: WalStage,
    pub(super) acks: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<Ack>>>,
    pub(super) recent: RecentMessages,
    /// Messages logged over the state directory's life (where a replayed fixture resumes).
    pub(super) messages: u64,
}

/// Replays the log after the checkpoint into the pipeline, then starts the write-ahead log
/// for new messages and asks for a checkpoint right away.
pub(super) fn recover(
    state: &OpenState,
    handoff: &Arc<Handoff>,
    metrics: &Arc<Metrics>,
    live_mqtt: bool,
    stop: &Shutdown,
) -> Result<Recovered, RunError> {
    let started = Instant::now();
    let log_dir = state.dir.log_dir();
    let shown = state.dir.root().display().to_string();
    let (number, covers_seq, replay_from, messages) = state
        .checkpoint
        .as_ref()
        .map_or((0, 0, 1, 0), |c| (c.number, c.covers_seq, c.replay_from, c.messages));
    metrics.state.enabled.store(true, Relaxed);
    if !state.dir.fresh {
        tracing::info!(dir = %shown, checkpoint = number, covers_seq, replay_from, "recovering: replaying the log after the checkpoint");
        tracing::info!("recovering from {shown} (checkpoint {number}, log from position {replay_from})");
    }
    let replayed = replay_log(&log_dir, replay_from, covers_seq, handoff, metrics).map_err(|e| match e {
        RecoveryError::Closed(_) => RunError::DecodeStopped,
        RecoveryError::Read(source) => RunError::Io {
            context: format!("reading the log of {shown}"),
            source,
        },
    })?;
    if replayed.report.cut_bytes > 0 {
        tracing::warn!(
            dir = %shown,
            cut_bytes = replayed.report.cut_bytes,
            segment = ?replayed.report.cut_segment,
            "the log ended in a torn record (a crash mid-write); it was cut there. Nothing acknowledged is lost: the broker sends those messages again"
        );
    }
    let next_seq = replayed.report.next_seq.max(covers_seq + 1);
    let mut recent = RecentMessages::default();
    let tail_from = next_seq.saturating_sub(RECENT_TAIL);
    let _ = log::read_from::<()>(&log_dir, tail_from, |record| {
        if let Record::Message { topic, payload, .. } = record {
            recent.remember(RecentMessages::fingerprint(&topic, &payload));
        }
        Ok(())
    });
    if !state.dir.fresh {
        tracing::info!(
            "recovered in {:.3} s: {} messages refilled open windows, {} replayed after the checkpoint",
            started.elapsed().as_secs_f64(),
            replayed.refilled,
            replayed.replayed
        );
    }
    let writer = LogWriter::create(&log_dir, next_seq).map_err(|source| RunError::Io {
        context: format!("starting the log in {shown}"),
        source,
    })?;
    let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel();
    let settings = WalSettings {
        checkpoint_every: state.checkpoint_interval,
        next_checkpoint: state.last_number + 1,
        messages_before: messages + replayed.replayed,
    };
    let (intake, stage) = WalStage::start(
        writer,
        Arc::clone(handoff),
        live_mqtt.then_some(ack_tx),
        settings,
        Arc::clone(metrics),
        stop.clone(),
    )
    .map_err(io("starting the log stage"))?;
    // The first checkpoint of the run: it also sets the receivers' view straight.
    intake.send(Intake::Checkpoint).map_err(|_| RunError::DecodeStopped)?;
    metrics.state.log_bytes.store(log::size_bytes(&log_dir), Relaxed);
    Ok(Recovered {
        intake,
        stage,
        acks: live_mqtt.then_some(ack_rx),
        recent,
        messages: messages + replayed.replayed,
    })
}

/// Log records read back at start to recognise redeliveries of logged messages.
const RECENT_TAIL: u64 = 65_536;

/// Per table, when its last row arrived, over every rule's snapshot.
pub(super) fn last_arrivals<'a>(rules: impl Iterator<Item = &'a RuleSnapshot>) -> Vec<(usize, i64)> {
    let mut latest: BTreeMap<usize, i64> = BTreeMap::new();
    for (table, at) in rules.flat_map(|r| r.last_arrivals.iter()) {
        if let Some(at) = at {
            let slot = latest.entry(*table).or_insert(*at);
            *slot = (*slot).max(*at);
        }
    }
    latest.into_iter().collect()
}

/// The resolutions of a rule that was removed while cityops was down: each alert it had
/// firing resolves.
pub(super) fn resolutions_of_removed(removed: &RuleSnapshot, clock: DetectionClock, metrics: &Metrics) -> Vec<Warning> {
    tracing::info!(rule = %removed.rule, "the rule was removed while cityops was down: its alerts resolve");
    let policy = Policy {
        fire_after: FireAfter::Windows(1),
        resolve_after: 1,
    };
    let mut lifecycle = Lifecycle::new(&removed.rule, policy);
    lifecycle.restore(removed.alerts.clone());
    let event_ms = removed.last_event_ms.unwrap_or_else(wall_now_ms);
    let step = CleanStep {
        window: None,
        detected_ms: match clock {
            DetectionClock::EventTime => event_ms,
            DetectionClock::Wall => wall_now_ms(),
        },
        arrived_ns: metrics.now_ns(),
    };
    let info = RuleInfo {
        rule: removed.rule.clone(),
        table: removed.table.clone(),
        description: removed.description.clone(),
    };
    lifecycle
        .retire(step)
        .into_iter()
        .map(|t| Warning::from_transition(&info, t, metrics.now_ns()))
        .collect()
}

/// Writes the live source's client id into the state directory when it holds none yet, so
/// the next start connects with the same id and finds its broker session.
pub(super) fn remember_client_id(root: &Path, client_id: &str) -> std::io::Result<()> {
    let path = root.join(crate::config::CLIENT_ID_FILE);
    match path.exists() {
        true => Ok(()),
        false => checkpoint::write_durably(root, crate::config::CLIENT_ID_FILE, format!("{client_id}\n").as_bytes()),
    }
}
