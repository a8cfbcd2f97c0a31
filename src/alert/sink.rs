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

use tokio::sync::mpsc;

use super::mqtt_sink::MqttSink;
use super::warning::{Warning, WarningStatus};
use super::webhook::WebhookSink;
use crate::broker::BrokerUrl;
use crate::config::{MqttConfig, WebhookConfig};
use crate::metrics::{Metrics, Stage};

/// One destination of warnings (Vector's `StreamSink`, one warning at a time).
pub(crate) trait Sink: Send {
    /// Delivers one warning. An error stops the sink thread (a file that cannot be written);
    /// a sink that can retry (MQTT, webhook) keeps its failures to itself and counts them.
    fn deliver(&mut self, warning: &Warning) -> Result<(), SinkError>;

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
        sinks.push(Box::new(JsonLinesSink::create(path)?));
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
pub(crate) fn start(
    sinks: Vec<Box<dyn Sink>>,
    collect: bool,
    rx: mpsc::Receiver<Warning>,
    metrics: Arc<Metrics>,
) -> Result<SinkHandle, SinkError> {
    let handle = std::thread::Builder::new()
        .name("sinks".to_string())
        .spawn(move || deliver(rx, sinks, collect, &metrics))
        .map_err(SinkError::Write)?;
    Ok(SinkHandle { handle })
}

fn deliver(
    mut rx: mpsc::Receiver<Warning>,
    mut sinks: Vec<Box<dyn Sink>>,
    collect: bool,
    metrics: &Metrics,
) -> Result<Vec<Warning>, SinkError> {
    let mut delivered = Vec::new();
    while let Some(warning) = rx.blocking_recv() {
        let started = Instant::now();
        for sink in sinks.iter_mut() {
            sink.deliver(&warning)?;
        }
        match warning.status {
            WarningStatus::Firing => metrics.add_warning(warning.level),
            WarningStatus::Resolved => {
                metrics.resolved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        metrics.record(Stage::SinkSend, started.elapsed().as_nanos() as u64);
        if collect {
            delivered.push(warning);
        }
    }
    for sink in sinks {
        sink.close()?;
    }
    Ok(delivered)
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
    fn create(path: &Path) -> Result<Self, SinkError> {
        let open_error = |source| SinkError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_error)?;
        }
        let file = File::create(path).map_err(open_error)?;
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

    fn close(mut self: Box<Self>) -> Result<(), SinkError> {
        self.file.flush()?;
        Ok(())
    }
}
