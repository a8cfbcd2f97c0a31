//! A cluster instance's partitions (`run --nats`): each runs as a pipeline of its own on a
//! thread of its own — the instance's rules and config, without HTTP, reload, desk or sinks
//! of its own (its warnings go to the instance's sink thread), one decode thread and one
//! rule thread — so event time, watermarks and idle advance are kept per (rule, partition).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::{PartitionFeed, RunError, RunOptions, Source, run};
use crate::alert::sink::{Notice, SinkConfig};
use crate::cluster::ClusterSource;
use crate::cluster::instance::{Instance, PartitionStart, run_instance};
use crate::cluster::ownership::Ownership;
use crate::config::{Config, DurationMs};
use crate::ingest::replay::Speed;
use crate::metrics::Metrics;
use crate::rules::worker::DetectionClock;
use crate::shutdown::Shutdown;

/// What every partition of one instance shares.
pub(super) struct Partitions {
    pub(super) config: Config,
    pub(super) warnings: mpsc::Sender<Notice>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) dead_letter_path: PathBuf,
}

impl Partitions {
    /// Runs the cluster instance (`run --nats`) on this thread until it ends, starting and
    /// stopping a pipeline per partition as it takes and gives them up.
    pub(super) fn run_instance(
        self,
        source: &ClusterSource,
        ownership: Arc<Ownership>,
        shutdown: &Shutdown,
    ) -> Result<(), RunError> {
        let start_partition = |start| self.start(start);
        let instance = Instance {
            config: &self.config,
            metrics: Arc::clone(&self.metrics),
            ownership,
            start_partition: &start_partition,
        };
        run_instance(source, instance, shutdown).map_err(RunError::Nats)
    }

    /// Starts a partition's pipeline, reading its items until they end.
    pub(super) fn start(&self, start: PartitionStart) -> Result<JoinHandle<()>, String> {
        let partition = start.partition;
        let options = self.options(start);
        std::thread::Builder::new()
            .name(format!("partition-{partition}"))
            .spawn(move || {
                if let Err(e) = run(options) {
                    tracing::error!(partition, error = %e, "cluster: partition {partition}'s pipeline failed; it is computed again from the stream when the partition is next taken");
                }
            })
            .map_err(|e| format!("starting partition {partition}: {e}"))
    }

    fn options(&self, start: PartitionStart) -> RunOptions {
        let partition = start.partition;
        let mut config = self.config.clone();
        config.http.bind = String::new();
        config.rules.reload_interval = DurationMs(0);
        config.engine.decode_threads = 1;
        RunOptions {
            config,
            fixture: Source::Partition(PartitionFeed {
                partition,
                whole_stream: partition == self.config.cluster.partitions,
                items: start.items,
                forward: self.warnings.clone(),
                epoch: start.epoch,
                resume: start.resume,
                plan: start.plan,
            }),
            speed: Speed::Max,
            sinks: SinkConfig::default(),
            dead_letter_path: partition_path(&self.dead_letter_path, partition),
            clock: DetectionClock::Wall,
            capture_results: false,
            reload_reports: None,
            stop: None,
            metrics: Some(Arc::clone(&self.metrics)),
            state: None,
        }
    }
}

/// `dead-letters.jsonl` → `dead-letters.p7.jsonl`.
fn partition_path(path: &Path, partition: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.p{partition}.{}", ext.to_string_lossy()),
        None => format!("{stem}.p{partition}"),
    };
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_partition_dead_letters_to_a_file_of_its_own() {
        assert_eq!(
            partition_path(Path::new("/var/lib/cityops/dead.jsonl"), 7),
            PathBuf::from("/var/lib/cityops/dead.p7.jsonl")
        );
        assert_eq!(partition_path(Path::new("dead"), 0), PathBuf::from("dead.p0"));
    }
}
