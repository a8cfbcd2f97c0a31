//! Delivery of warnings: one sink thread takes them from the rule stage's bounded queue and
//! writes each to stdout (a readable line), a JSON Lines file and/or an MQTT broker
//! (`mqtt_sink`), counting by level and timing each send. Slow sinks back-pressure the rules through the queue, never drop.

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
use crate::config::{MqttConfig, WebhookConfig};
use crate::live::LiveState;
use crate::metrics::{Metrics, Stage};
use crate::mqtt::BrokerUrl;

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
    #[error("warning sink: {0}")]
    Mqtt(String),
}

/// The running sink thread.
pub struct SinkHandle {
    handle: JoinHandle<Result<Vec<Warning>, SinkError>>,
}

impl SinkHandle {
    /// Waits for the queue to drain; returns the warnings delivered, in order, when collecting.
    pub fn finish(self) -> Result<Vec<Warning>, SinkError> {
        self.handle.join().map_err(|_| SinkError::Panicked)?
    }
}

/// Starts the sink thread reading from `rx`.
pub fn start(
    config: SinkConfig,
    rx: mpsc::Receiver<Warning>,
    metrics: Arc<Metrics>,
    live: Option<Arc<LiveState>>,
) -> Result<SinkHandle, SinkError> {
    let jsonl = match &config.jsonl {
        Some(path) => Some(open(path)?),
        None => None,
    };
    let mqtt = match &config.mqtt {
        Some((url, mqtt)) => Some(MqttSink::connect(url, mqtt).map_err(SinkError::Mqtt)?),
        None => None,
    };
    let webhook = match &config.webhook {
        Some(webhook) => Some(WebhookSink::start(webhook, Arc::clone(&metrics)).map_err(SinkError::Mqtt)?),
        None => None,
    };
    let handle = std::thread::Builder::new()
        .name("sinks".to_string())
        .spawn(move || deliver(rx, &config, jsonl, mqtt, webhook, live, &metrics))
        .map_err(SinkError::Write)?;
    Ok(SinkHandle { handle })
}

fn open(path: &Path) -> Result<BufWriter<File>, SinkError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| SinkError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    }
    File::create(path)
        .map(BufWriter::new)
        .map_err(|source| SinkError::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn deliver(
    mut rx: mpsc::Receiver<Warning>,
    config: &SinkConfig,
    mut jsonl: Option<BufWriter<File>>,
    mut mqtt: Option<MqttSink>,
    webhook: Option<WebhookSink>,
    live: Option<Arc<LiveState>>,
    metrics: &Metrics,
) -> Result<Vec<Warning>, SinkError> {
    let mut delivered = Vec::new();
    while let Some(warning) = rx.blocking_recv() {
        let started = Instant::now();
        if config.stdout {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", warning.human_line())?;
        }
        if let Some(file) = jsonl.as_mut() {
            serde_json::to_writer(&mut *file, &warning).map_err(std::io::Error::from)?;
            file.write_all(b"\n")?;
            file.flush()?;
        }
        if let Some(sink) = mqtt.as_mut()
            && let Err(e) = sink.publish(&warning)
        {
            // Only a closed client fails here (the connection retries by itself).
            metrics.sink_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, alert = %warning.alert_id, "warning sink: mqtt publish failed");
        }
        if let Some(webhook) = &webhook {
            webhook.enqueue(&warning);
        }
        if let Some(live) = &live {
            live.record(&warning);
        }
        match warning.status {
            WarningStatus::Firing => metrics.add_warning(warning.level),
            WarningStatus::Resolved => {
                metrics.resolved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        metrics.record(Stage::SinkSend, started.elapsed().as_nanos() as u64);
        if config.collect {
            delivered.push(warning);
        }
    }
    if let Some(mut file) = jsonl {
        file.flush()?;
    }
    if let Some(sink) = mqtt {
        sink.close();
    }
    if let Some(webhook) = webhook {
        webhook.close();
    }
    Ok(delivered)
}
