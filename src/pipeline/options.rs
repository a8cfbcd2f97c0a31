//! What a run is given and what it gives back: its source, options and state directory,
//! its outcome, and the errors that stop it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::alert::sink::{Notice, SinkConfig, SinkError};
use crate::alert::warning::Warning;
use crate::cluster::ClusterSource;
use crate::config::Config;
use crate::flow::Message;
use crate::http::HttpError;
use crate::ingest::fixture::FixtureError;
use crate::ingest::mqtt::MqttSource;
use crate::ingest::partition_feed::{Fed, FeedPlan};
use crate::ingest::replay::Speed;
use crate::metrics::Metrics;
use crate::rules::problem::Problem;
use crate::rules::reload::ReloadReport;
use crate::rules::worker::{DetectionClock, RuleReport, WindowResult};
use crate::shutdown::Shutdown;
use crate::state::StateError;
use crate::state::checkpoint::Checkpoint;
use crate::summary::Summary;

/// Where messages come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The demo city embedded in the binary.
    Demo,
    File(PathBuf),
    /// Messages handed over one by one (tests, and sources that record as they go); the
    /// stream ends when every sender is dropped.
    Channel(crossbeam_channel::Receiver<Message>),
    /// A live MQTT subscription.
    Mqtt(Box<MqttSource>),
    /// A cluster instance on a NATS JetStream stream (`run --nats`): a pipeline per
    /// partition it holds, their warnings sent from this run.
    Cluster(Box<ClusterSource>),
    /// One partition of a cluster instance (its readings and ticks in stream order); its
    /// warnings go to the instance.
    Partition(PartitionFeed),
}

/// A partition's input and where its warnings go (see `cluster::instance`).
#[derive(Debug, Clone)]
pub struct PartitionFeed {
    pub(crate) partition: u32,
    /// Whether this is the whole-stream slot (every partition's readings, for the rules
    /// over many devices) rather than a partition (the rules over one device at a time).
    pub(crate) whole_stream: bool,
    pub(crate) items: crossbeam_channel::Receiver<Fed>,
    pub(crate) forward: mpsc::Sender<Notice>,
    /// The lease epoch this pipeline runs under: its checkpoints are stored only while the
    /// instance still holds the partition at that epoch.
    pub(crate) epoch: u64,
    /// The checkpoint it goes on from (`None`: from the partition's first reading).
    pub(crate) resume: Option<Arc<Checkpoint>>,
    pub(crate) plan: FeedPlan,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: Config,
    pub fixture: Source,
    pub speed: Speed,
    pub sinks: SinkConfig,
    pub dead_letter_path: PathBuf,
    pub clock: DetectionClock,
    /// Keep every closed window's result rows (rule tests).
    pub capture_results: bool,
    /// Where each hot reload's report goes, besides the log.
    pub reload_reports: Option<crossbeam_channel::Sender<ReloadReport>>,
    /// Requested to end a live source (Ctrl-C); replays end with their fixture.
    pub stop: Option<Shutdown>,
    /// Counters and histograms to fill, when the caller watches them live (dashboard).
    pub metrics: Option<Arc<Metrics>>,
    /// Keep durable state in this directory (write-ahead log, checkpoints): a run killed at
    /// any point starts again where it was, with nothing lost.
    pub state: Option<StateOptions>,
}

/// Where and how often a run keeps its state.
#[derive(Debug, Clone)]
pub struct StateOptions {
    pub dir: PathBuf,
    pub checkpoint_interval: Duration,
}

/// What a finished run hands back.
#[derive(Debug)]
pub struct RunOutcome {
    pub summary: Summary,
    /// Delivered warnings, when the sink config collects them.
    pub warnings: Vec<Warning>,
    /// Per rule: alerts firing at the end and evaluation errors.
    pub reports: Vec<RuleReport>,
    /// Rule warnings from `check` (the run went ahead).
    pub rule_warnings: Vec<Problem>,
    /// Closed windows' result rows, when captured.
    pub results: Vec<WindowResult>,
}

/// A run that could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{} rule problem(s):\n{}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<Problem>),
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The config names something that cannot work (a bad topic pattern or HTTP address).
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("mqtt: {0}")]
    Mqtt(String),
    #[error("nats: {0}")]
    Nats(String),
    /// The decode queues closed early: a decode worker is gone.
    #[error("the decode workers have stopped")]
    DecodeStopped,
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("internal: {0}")]
    Internal(String),
}
