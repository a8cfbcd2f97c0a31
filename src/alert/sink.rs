//! Delivery of warnings: one sink thread takes them from the rule stage's bounded queue and
//! hands each to every configured [`Sink`] in turn — stdout (a readable line), a JSON Lines
//! file, an MQTT broker (`mqtt_sink`), a webhook (`webhook`), and the dashboard's feed,
//! which the HTTP side implements — counting by level and timing each send. Slow sinks
//! back-pressure the rules through the queue, never drop.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::durable::Durable;
use super::mqtt_sink::MqttSink;
use super::warning::{Warning, WarningStatus};
use super::webhook::WebhookSink;
use crate::alert::desk::actions::{ActionError, Operation};
use crate::alert::desk::book::{Applied, Outgoing};
use crate::alert::desk::keeper::{DeskKeeper, Step};
use crate::broker::BrokerUrl;
use crate::config::{MqttConfig, WebhookConfig};
use crate::flow::Cut;
use crate::metrics::{Metrics, Stage};
use crate::state::checkpoint::Checkpoint;
use crate::state::snapshot::RuleSnapshot;
use crate::time::EpochMs;

/// What the sink thread takes, in order: from the rule stage, warnings and snapshots; from
/// the HTTP side, operators' actions; from the clock, the time. Warnings go by value (they
/// are the common item; a box each would cost an allocation), the rest boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Notice {
    Warning(Warning),
    /// A warning computed by one partition of a cluster instance (`run --nats`): the fence
    /// lets it out only while this instance holds that partition.
    FromPartition(u32, Warning),
    /// A rule's state at a checkpoint's cut; every warning the rule emitted before the cut
    /// came first. `rules` names every rule the checkpoint waits for.
    Snapshot {
        cut: Cut,
        rules: Arc<[String]>,
        snapshot: Box<RuleSnapshot>,
    },
    /// An operator's action for the desk; the answer goes back on `reply`.
    Operator(Box<OperatorRequest>),
    /// The wall clock (epoch ms), each second of a live run: deadlines run on it.
    Clock(EpochMs),
    /// A cluster partition's checkpoint (`epoch`: the lease it was computed under), behind
    /// every warning the partition computed before its cut: stored once those are sent.
    PartitionCheckpoint {
        partition: u32,
        epoch: u64,
        checkpoint: Box<Checkpoint>,
    },
    /// Everything queued before this is sent and settled (a cluster instance about to give
    /// a partition up: what it sent is recorded before a peer computes the partition).
    Drained(oneshot::Sender<()>),
}

/// An action and where its answer goes.
#[derive(Debug)]
pub(crate) struct OperatorRequest {
    pub operation: Operation,
    pub reply: oneshot::Sender<Result<Applied, ActionError>>,
}

/// One destination of warnings (Vector's `StreamSink`, one warning at a time).
pub(crate) trait Sink: Send {
    /// Delivers one warning. An error stops the sink thread (a file that cannot be written);
    /// a sink that can retry (MQTT, webhook) keeps its failures to itself and counts them.
    fn deliver(&mut self, warning: &Warning) -> Result<(), SinkError>;

    /// Makes every warning delivered so far durable at the receiver (a file synced, the
    /// broker's acks in); false when it could not be confirmed (the warnings are then not
    /// recorded as delivered, and a recovery sends them again with the same identity).
    fn settle(&mut self) -> bool {
        true
    }

    /// Sets the receiver's view of what fires now straight, when it keeps one (the MQTT
    /// sink's retained states): `firing` is every alert firing after recovery.
    fn reconcile(&mut self, _firing: &[Warning]) {}

    /// Whether the sink's view dies with the process (the dashboard): it takes the
    /// notifications recovery computes again, which the other sinks already have.
    fn in_memory(&self) -> bool {
        false
    }

    /// Whether the sink pages people (MQTT, webhook): a silence holds notifications back
    /// from it; the records (stdout, file) and the dashboard still get them, marked.
    fn pages(&self) -> bool {
        false
    }

    /// A firing alert's marks changed (acknowledged, assigned): a sink that keeps a view of
    /// what fires (the retained MQTT state, the dashboard) shows the new marks.
    fn remark(&mut self, _firing: &Warning) {}

    /// Whether the sink only hands warnings on to another run's sink thread (a cluster
    /// partition's), which counts them when it sends them.
    fn forwards(&self) -> bool {
        false
    }

    /// A rule's state at a checkpoint's cut, for a sink that hands checkpoints on (a
    /// cluster partition's); a run with state assembles its own (`Durable`).
    fn snapshot(&mut self, _cut: Cut, _rules: &Arc<[String]>, _snapshot: RuleSnapshot) {}

    /// Flushes and lets go, after the last warning.
    fn close(self: Box<Self>) -> Result<(), SinkError>;
}

/// Where warnings go.
#[derive(Debug, Clone, Default)]
pub struct SinkConfig {
    /// Print one line per warning.
    pub stdout: bool,
    /// Write the JSON objects, one per line.
    pub jsonl: Option<PathBuf>,
    /// Keep every delivered warning in memory and return it from `finish` (tests, replays).
    pub collect: bool,
    /// Publish to an MQTT broker (`warnings/<level>/<rule>` plus retained state).
    pub mqtt: Option<(BrokerUrl, MqttConfig)>,
    /// POST to a webhook through the on-disk spool.
    pub webhook: Option<WebhookConfig>,
    /// Append to the JSON Lines file instead of starting it afresh (a run on a state dir
    /// continues what the run before wrote).
    pub append: bool,
}

/// A sink that could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open warning file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("writing warnings: {0}")]
    Write(#[from] std::io::Error),
    #[error("the sink thread panicked")]
    Panicked,
    /// The MQTT sink could not be set up (the message names the broker and the cause).
    #[error("warning sink: {0}")]
    Mqtt(String),
    /// The webhook sink could not be set up (its spool directory or sender thread).
    #[error("warning sink: {0}")]
    Webhook(String),
}

/// Opens the sinks `config` names, in delivery order: stdout, file, MQTT, webhook.
pub(crate) fn open(config: &SinkConfig, metrics: &Arc<Metrics>) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if config.stdout {
        sinks.push(Box::new(StdoutSink));
    }
    if let Some(path) = &config.jsonl {
        sinks.push(Box::new(JsonLinesSink::create(path, config.append)?));
    }
    if let Some((url, mqtt)) = &config.mqtt {
        sinks.push(Box::new(
            MqttSink::connect(url, mqtt, Arc::clone(metrics)).map_err(SinkError::Mqtt)?,
        ));
    }
    if let Some(webhook) = &config.webhook {
        sinks.push(Box::new(
            WebhookSink::start(webhook, Arc::clone(metrics)).map_err(SinkError::Webhook)?,
        ));
    }
    Ok(sinks)
}

/// Which warnings this instance may send (a cluster instance: those of partitions whose
/// lease it holds, so an owner that stalled past its lease stays silent).
pub(crate) trait Fence: Send + Sync + std::fmt::Debug {
    /// Whether `warning`, computed by `partition` (by every partition, when `None`), may go
    /// out from here now.
    fn admits(&self, partition: Option<u32>, warning: &Warning) -> bool;
    /// `warning` went out (to be recorded once the sinks confirm it).
    fn sent(&self, _warning: &Warning) {}
    /// The sinks confirmed (or could not confirm) what went out so far: what was sent is
    /// recorded for whoever sends these alerts' notifications next.
    fn settled(&self, _confirmed: bool) {}
    /// Whether sent notifications wait for `settled` now.
    fn waits(&self) -> bool {
        false
    }
    /// Everything `partition` computed before `checkpoint`'s cut went out (under the lease
    /// `epoch`): the checkpoint may be stored for whoever computes the partition next.
    fn checkpoint(&self, _partition: u32, _epoch: u64, _checkpoint: &Checkpoint) {}
}

/// The running sink thread.
pub(crate) struct SinkHandle {
    handle: JoinHandle<Result<Vec<Warning>, SinkError>>,
}

impl SinkHandle {
    /// Waits for the queue to drain; returns the warnings delivered, in order, when collecting.
    pub(crate) fn finish(self) -> Result<Vec<Warning>, SinkError> {
        self.handle.join().map_err(|_| SinkError::Panicked)?
    }
}

/// Starts the sink thread reading from `rx`; `collect` keeps every warning for `finish`.
/// With `durable`, deliveries are recorded, notifications already delivered before a crash
/// are not sent again, and checkpoints are written. With `desk`, each warning is marked by
/// the operations desk (and held back from the paging sinks while silenced), operators'
/// actions are applied, and deadlines run on the clock notices.
pub(crate) fn start(
    sinks: Vec<Box<dyn Sink>>,
    collect: bool,
    rx: mpsc::Receiver<Notice>,
    durable: Option<Durable>,
    desk: Option<DeskKeeper>,
    fence: Option<Arc<dyn Fence>>,
    metrics: Arc<Metrics>,
) -> Result<SinkHandle, SinkError> {
    let counts = !sinks.iter().all(|s| s.forwards()) || sinks.is_empty();
    let mut thread = SinkThread {
        counts,
        sinks,
        collect,
        durable,
        desk,
        fence,
        metrics,
        delivered: Vec::new(),
    };
    let handle = std::thread::Builder::new()
        .name("sinks".to_string())
        .spawn(move || thread.run(rx))
        .map_err(SinkError::Write)?;
    Ok(SinkHandle { handle })
}

/// The sink thread's state.
struct SinkThread {
    /// Whether this thread counts what it sends (not when it only forwards).
    counts: bool,
    sinks: Vec<Box<dyn Sink>>,
    collect: bool,
    durable: Option<Durable>,
    desk: Option<DeskKeeper>,
    fence: Option<Arc<dyn Fence>>,
    metrics: Arc<Metrics>,
    delivered: Vec<Warning>,
}

impl SinkThread {
    fn run(&mut self, mut rx: mpsc::Receiver<Notice>) -> Result<Vec<Warning>, SinkError> {
        loop {
            let notice = match rx.try_recv() {
                Ok(notice) => notice,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // A quiet moment: what was delivered is confirmed and recorded.
                    let _ = self.settle()?;
                    match rx.blocking_recv() {
                        Some(notice) => notice,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            match notice {
                Notice::Warning(warning) => self.on_warning(None, warning)?,
                Notice::FromPartition(partition, warning) => self.on_warning(Some(partition), warning)?,
                Notice::Snapshot { cut, rules, snapshot } => match self.durable.as_mut() {
                    Some(durable) => durable.on_snapshot(cut, &rules, *snapshot, &mut self.sinks)?,
                    None => {
                        if let Some(sink) = self.sinks.iter_mut().find(|s| s.forwards()) {
                            sink.snapshot(cut, &rules, *snapshot);
                        }
                    }
                },
                Notice::PartitionCheckpoint {
                    partition,
                    epoch,
                    checkpoint,
                } => {
                    // Everything the partition computed before the cut is at the receivers
                    // (and in the delivery record) before its state says so.
                    let confirmed = self.settle()?;
                    if let Some(fence) = self.fence.as_ref().filter(|_| confirmed) {
                        fence.checkpoint(partition, epoch, &checkpoint);
                    }
                }
                Notice::Operator(request) => self.on_operator(*request)?,
                Notice::Drained(reply) => {
                    let _ = self.settle()?;
                    let _ = reply.send(());
                }
                Notice::Clock(now_ms) => {
                    // Deadlines wait for recovery: a recovered resolve may still be on its way.
                    let recovered = self
                        .metrics
                        .readiness
                        .recovered
                        .load(std::sync::atomic::Ordering::Relaxed);
                    if let Some(desk) = self.desk.as_mut() {
                        let step = desk.tick(now_ms, recovered);
                        self.run_step(step)?;
                    }
                }
            }
        }
        let _ = self.settle()?;
        for sink in std::mem::take(&mut self.sinks) {
            sink.close()?;
        }
        Ok(std::mem::take(&mut self.delivered))
    }

    /// Has the sinks confirm what they were given and records it; false when some sink
    /// could not confirm.
    fn settle(&mut self) -> Result<bool, SinkError> {
        let mut confirmed = true;
        if let Some(durable) = self.durable.as_mut() {
            confirmed &= durable.settle(&mut self.sinks)?;
        }
        if let Some(fence) = self.fence.as_ref().filter(|f| f.waits()) {
            let mut sinks_confirmed = true;
            for sink in &mut self.sinks {
                sinks_confirmed &= sink.settle();
            }
            fence.settled(sinks_confirmed);
            confirmed &= sinks_confirmed;
        }
        if let Some(desk) = self.desk.as_mut() {
            desk.settle();
        }
        Ok(confirmed)
    }

    /// A lifecycle notification, marked by the desk (with what the desk's clock released
    /// before it, on a replay).
    fn on_warning(&mut self, partition: Option<u32>, warning: Warning) -> Result<(), SinkError> {
        let fence = self.fence.clone();
        let Some(fence) = fence else {
            return self.lifecycle(warning);
        };
        if !fence.admits(partition, &warning) {
            return Ok(());
        }
        let record = warning.clone();
        self.lifecycle(warning)?;
        fence.sent(&record);
        Ok(())
    }

    /// A lifecycle notification through the desk (when there is one) to the sinks.
    fn lifecycle(&mut self, warning: Warning) -> Result<(), SinkError> {
        match self.desk.as_mut() {
            Some(desk) => {
                let step = desk.on_warning(warning);
                self.run_step(step)
            }
            None => self.deliver_one(&Outgoing::lifecycle(warning, true)),
        }
    }

    /// Delivers what the desk decided, then has it journaled: once the sinks confirmed what
    /// the desk made itself (escalations, releases), when it made any.
    fn run_step(&mut self, step: Step) -> Result<(), SinkError> {
        for out in &step.out {
            self.deliver_one(out)?;
        }
        let confirmed = match self.durable.as_mut() {
            Some(durable) if step.needs_confirmation() => durable.settle(&mut self.sinks)?,
            _ => true,
        };
        if let Some(desk) = self.desk.as_mut() {
            desk.done(step, confirmed);
        }
        Ok(())
    }

    /// One notification: skipped by the sinks that already have it (a recovery computed it
    /// again), recorded as delivered.
    fn deliver_one(&mut self, out: &Outgoing) -> Result<(), SinkError> {
        let started = Instant::now();
        let identity = out.identity();
        let again = self.durable.as_mut().is_some_and(|d| d.already_delivered(&identity));
        self.send(out, again)?;
        if let Some(durable) = self.durable.as_mut() {
            durable.delivered(&out.warning, identity, !again, out.page);
        }
        if !again && self.counts {
            self.metrics
                .record(Stage::SinkSend, started.elapsed().as_nanos() as u64);
        }
        Ok(())
    }

    /// Hands one notification to the sinks: those that already have it (`again`) and, when
    /// it is silenced, the paging ones are left out.
    fn send(&mut self, out: &Outgoing, again: bool) -> Result<(), SinkError> {
        for sink in self
            .sinks
            .iter_mut()
            .filter(|s| (!again || s.in_memory()) && (out.page || !s.pages()))
        {
            sink.deliver(&out.warning)?;
        }
        if again {
            return Ok(());
        }
        if self.counts {
            self.count(&out.warning);
        }
        if self.collect {
            self.delivered.push(out.warning.clone());
        }
        Ok(())
    }

    /// A notification sent, in the warning counters.
    fn count(&self, warning: &Warning) {
        match warning.status {
            WarningStatus::Firing => self.metrics.add_warning(warning.level),
            WarningStatus::Resolved => {
                self.metrics.resolved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            WarningStatus::Escalated => {}
        }
    }

    /// An operator's action: applied by the desk, its answer sent back, the receivers'
    /// views remarked, and what it released notified.
    fn on_operator(&mut self, request: OperatorRequest) -> Result<(), SinkError> {
        let Some(desk) = self.desk.as_mut() else {
            let _ = request.reply.send(Err(ActionError::Unavailable));
            return Ok(());
        };
        match desk.operate(request.operation) {
            Ok(operated) => {
                for firing in &operated.applied.remarked {
                    for sink in self.sinks.iter_mut().filter(|s| firing.page || !s.pages()) {
                        sink.remark(&firing.warning);
                    }
                }
                let answer = match operated.not_durable {
                    None => Ok(operated.applied),
                    Some(e) => Err(ActionError::NotDurable(e)),
                };
                let _ = request.reply.send(answer);
                self.run_step(operated.step)
            }
            Err(refused) => {
                let _ = request.reply.send(Err(refused));
                Ok(())
            }
        }
    }
}

/// One readable line per warning on stdout.
struct StdoutSink;

impl Sink for StdoutSink {
    fn deliver(&mut self, warning: &Warning) -> Result<(), SinkError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", warning.human_line())?;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The warning JSON, one object per line, flushed after each.
struct JsonLinesSink {
    file: BufWriter<File>,
}

impl JsonLinesSink {
    fn create(path: &Path, append: bool) -> Result<Self, SinkError> {
        let open_error = |source| SinkError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_error)?;
        }
        let file = if append {
            crate::state::open_appending_lines(path)
        } else {
            File::create(path)
        }
        .map_err(open_error)?;
        Ok(JsonLinesSink {
            file: BufWriter::new(file),
        })
    }
}

impl Sink for JsonLinesSink {
    fn deliver(&mut self, warning: &Warning) -> Result<(), SinkError> {
        serde_json::to_writer(&mut self.file, warning).map_err(std::io::Error::from)?;
        self.file.write_all(b"\n")?;
        self.file.flush()?;
        Ok(())
    }

    fn settle(&mut self) -> bool {
        self.file.flush().and_then(|()| self.file.get_ref().sync_data()).is_ok()
    }

    fn close(mut self: Box<Self>) -> Result<(), SinkError> {
        self.file.flush()?;
        Ok(())
    }
}
