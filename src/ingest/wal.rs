//! The intake of a run that keeps state: one thread between the source and the decode
//! queues that appends every message and clock tick to the write-ahead log, makes each
//! group durable with one `fdatasync` (group commit: whatever the source handed over while
//! the previous group was being synced), and only then passes the group on, in log order,
//! and hands its QoS 1 acks back to the source. Ticks are logged too, so a replay of the
//! log after a crash reproduces exactly what the live run computed. Every
//! `checkpoint_interval` it puts a checkpoint's cut (`Ingest::Barrier`) into every decode
//! queue behind the last message logged.
//!
//! A failed write (a full disk) is retried every second, loudly: meanwhile nothing is passed
//! on and nothing acked, the source stops reading when this stage's queue is full, and the
//! broker holds the backlog. A stop requested meanwhile ends the retries: what the log could
//! not take is dropped unacknowledged.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rumqttc::Publish;

use super::replay::Downstream;
use crate::flow::{Closed, Cut, Ingest, Message};
use crate::metrics::Metrics;
use crate::queue::{Bursts, Handoff};
use crate::shutdown::Shutdown;
use crate::state::log::LogWriter;
use crate::time::wall_now_ms;

/// A publish to acknowledge, on the connection it came on (an ack must never travel on a
/// later connection, where its packet id names another message).
#[derive(Debug)]
pub(crate) struct Ack {
    pub connection: u64,
    pub publish: Publish,
}

/// What the source hands the intake, in arrival order.
#[derive(Debug)]
pub(crate) enum Intake {
    /// A message, with the publish to acknowledge once it is durable (QoS 1 and 2).
    Message(Message, Option<Ack>),
    /// A redelivery of a message already logged: acknowledged once everything before it is
    /// durable, and not logged again.
    AckOnly(Ack),
    /// The live clock reached `now_ms`.
    Tick(i64),
    /// Take a checkpoint now, after everything handed over so far (recovery's end, and
    /// a clean stop).
    Checkpoint,
    /// What one socket read brought, in order: one queue operation and at most one
    /// wake-up of the log stage for the lot.
    Batch(Vec<Intake>),
}

/// A replayed fixture logs its messages too.
impl Downstream for Sender<Intake> {
    fn message(&mut self, msg: Message) -> Result<(), Closed> {
        self.send(Intake::Message(msg, None)).map_err(|_| Closed)
    }

    fn tick(&mut self, now_ms: i64) -> Result<(), Closed> {
        self.send(Intake::Tick(now_ms)).map_err(|_| Closed)
    }
}

/// Items the intake's queue holds before the source waits.
pub(crate) const INTAKE_QUEUE: usize = 4_096;
/// The most messages (and bytes) one group commit takes.
const MAX_GROUP: usize = 8_192;
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// How often a failed log write is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Settings of the intake stage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalSettings {
    pub checkpoint_every: Duration,
    /// The number the next checkpoint gets.
    pub next_checkpoint: u64,
    /// Messages logged before this run (a checkpoint records the running total).
    pub messages_before: u64,
}

/// Where committed acks go: the MQTT source sends them on its connection.
pub(crate) type AckSender = tokio::sync::mpsc::UnboundedSender<Vec<Ack>>;

/// The running intake thread.
pub(crate) struct WalStage {
    handle: JoinHandle<Result<(), Closed>>,
}

impl WalStage {
    /// Starts the intake thread: it ends when every sender of its queue is dropped, after
    /// passing on what it has.
    pub(crate) fn start(
        writer: LogWriter,
        handoff: Arc<Handoff>,
        acks: Option<AckSender>,
        settings: WalSettings,
        metrics: Arc<Metrics>,
        stop: Shutdown,
    ) -> std::io::Result<(Sender<Intake>, WalStage)> {
        let (tx, rx) = crossbeam_channel::bounded(INTAKE_QUEUE);
        let last_cut_seq = writer.next_seq() - 1;
        let handle = std::thread::Builder::new().name("wal".to_string()).spawn(move || {
            let mut stage = Stage {
                writer,
                bursts: Bursts::new(&handoff),
                handoff,
                acks,
                settings,
                metrics,
                last_cut_seq,
                stop,
            };
            stage.run(&rx)
        })?;
        Ok((tx, WalStage { handle }))
    }

    /// Waits for the intake to pass on everything it was given.
    pub(crate) fn finish(self) -> Result<(), Closed> {
        self.handle.join().map_err(|_| Closed)?
    }
}

struct Stage {
    writer: LogWriter,
    handoff: Arc<Handoff>,
    bursts: Bursts,
    acks: Option<AckSender>,
    settings: WalSettings,
    metrics: Arc<Metrics>,
    /// The log position the last cut covered.
    last_cut_seq: u64,
    /// The run's stop: a log that cannot be written gives up once it is requested.
    stop: Shutdown,
}

impl Stage {
    fn run(&mut self, rx: &Receiver<Intake>) -> Result<(), Closed> {
        let mut last_checkpoint = Instant::now();
        loop {
            let due = last_checkpoint + self.settings.checkpoint_every;
            let first = match rx.recv_deadline(due) {
                Ok(item) => Some(item),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = Vec::new();
            let mut wants_cut = false;
            if let Some(item) = first {
                self.take(item, &mut group, &mut wants_cut);
                while group.len() < MAX_GROUP && self.writer.pending_bytes() < MAX_GROUP_BYTES {
                    match rx.try_recv() {
                        Ok(item) => self.take(item, &mut group, &mut wants_cut),
                        Err(_) => break,
                    }
                }
            }
            if !self.commit() {
                // Stopped while the disk refuses the log: nothing more is passed on or acked
                // (the broker sends it all again); what still comes is taken and dropped, so
                // the source is never left waiting.
                for _ in rx.iter() {}
                return Ok(());
            }
            self.pass_on(group)?;
            let now = Instant::now();
            if wants_cut || now >= due {
                self.cut(wants_cut)?;
                last_checkpoint = now;
            }
        }
        self.commit();
        Ok(())
    }

    /// Adds an item (or each item of a batch) to the group, appending it to the log buffer.
    fn take(&mut self, item: Intake, group: &mut Vec<Intake>, wants_cut: &mut bool) {
        let items = match item {
            Intake::Batch(items) => items,
            single => vec![single],
        };
        for mut item in items {
            self.append(&mut item, wants_cut);
            group.push(item);
        }
    }

    /// Appends one item to the log buffer (a message gets its log position).
    fn append(&mut self, item: &mut Intake, wants_cut: &mut bool) {
        match item {
            Intake::Message(msg, _) => {
                // "Now" for readings too far ahead is fixed when the message is logged, so a
                // replay of the log judges it as this run does.
                if msg.received_ms == 0 {
                    msg.received_ms = wall_now_ms();
                }
                msg.seq = self.writer.append_message(
                    msg.at_ms,
                    msg.received_ms,
                    &msg.topic,
                    &msg.payload,
                    msg.recorded_invalid,
                );
                self.settings.messages_before += 1;
            }
            Intake::Tick(now_ms) => {
                self.writer.append_tick(*now_ms);
            }
            Intake::AckOnly(_) | Intake::Batch(_) => {}
            Intake::Checkpoint => *wants_cut = true,
        }
    }

    /// Makes the appended records durable, retrying (loudly) until the disk takes them;
    /// false when the run was stopped before it did.
    fn commit(&mut self) -> bool {
        if self.writer.pending_bytes() == 0 {
            return true;
        }
        let state = &self.metrics.state;
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.writer.commit() {
                Ok(_) => break,
                Err(e) => {
                    state.log_errors.fetch_add(1, Relaxed);
                    state.log_stalled.store(true, Relaxed);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    tracing::error!(
                        error = %e,
                        stalled_s = since.elapsed().as_secs(),
                        "the write-ahead log cannot be written (is the disk full?): no message is acknowledged until it can; the broker holds the backlog. Free space on the state directory's disk"
                    );
                    if self.stop.is_requested() {
                        tracing::error!(
                            "stopping with messages the log could not take: they are not acknowledged, and the broker sends them again (free space on the state directory's disk before restarting)"
                        );
                        return false;
                    }
                    std::thread::sleep(RETRY_EVERY);
                }
            }
        }
        if failing_since.is_some() {
            tracing::info!("the write-ahead log is written again; acknowledgements resume");
        }
        state.log_stalled.store(false, Relaxed);
        state.log_commits.fetch_add(1, Relaxed);
        true
    }

    /// Passes a durable group on in log order and hands its acks back.
    fn pass_on(&mut self, group: Vec<Intake>) -> Result<(), Closed> {
        let mut acks = Vec::new();
        let mut messages = 0;
        for item in group {
            match item {
                Intake::Message(msg, ack) => {
                    messages += 1;
                    let worker = self.handoff.worker_for(msg.topic.as_bytes());
                    self.bursts.push(&self.handoff, worker, msg)?;
                    acks.extend(ack);
                }
                Intake::Tick(now_ms) => {
                    self.bursts.flush(&self.handoff)?;
                    self.handoff.broadcast(|| Ingest::Tick { now_ms })?;
                }
                Intake::AckOnly(ack) => acks.push(ack),
                Intake::Checkpoint | Intake::Batch(_) => {}
            }
        }
        self.bursts.flush(&self.handoff)?;
        self.metrics.state.log_messages.fetch_add(messages, Relaxed);
        if let Some(tx) = &self.acks
            && !acks.is_empty()
        {
            let _ = tx.send(acks);
        }
        Ok(())
    }

    /// Puts a checkpoint's cut behind everything logged so far: when asked to, or when
    /// anything was logged since the last cut.
    fn cut(&mut self, asked: bool) -> Result<(), Closed> {
        let covers_seq = self.writer.next_seq() - 1;
        if covers_seq == self.last_cut_seq && !asked {
            return Ok(());
        }
        let cut = Cut {
            checkpoint: self.settings.next_checkpoint,
            covers_seq,
            messages: self.settings.messages_before,
            next_tick_ms: None,
        };
        self.settings.next_checkpoint += 1;
        self.last_cut_seq = covers_seq;
        self.handoff.broadcast(|| Ingest::Barrier(cut))
    }
}
