//! A cluster instance (`cityops run --nats URL`): the source loop of its run. It checks the
//! stream, starts the lease keeper, and for each partition it holds runs a pipeline of its
//! own (`Source::Partition`: one partition's readings and ticks, in stream order) fed by a
//! consumer from where the partition's stored checkpoint says (`checkpoints`; from the
//! partition's first reading when it has none); their warnings and new checkpoints come back
//! to this run's sink thread, where the fence and the shared delivery record decide what
//! goes out and what is stored.
//! Each second it writes a tick into every partition it holds, so quiet partitions still
//! close their windows, at a time every later reader sees the same.
//!
//! How a run ends:
//! - `--max-messages` or `--idle-exit` (the input is over): the partitions' pipelines end
//!   and close their open windows while their leases are still held, then the leases are
//!   given back;
//! - a stop (Ctrl-C, SIGTERM): a handover. Each partition's consumer stops and its state
//!   through the last reading read is checkpointed (`handover`); then the partitions are
//!   fenced (what their pipelines still compute is not sent), the leases are given back,
//!   and the peers that take them go on from those checkpoints. A partition the keeper
//!   gives to a peer for balance is handed over the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use super::checkpoints::CheckpointStore;
use super::consumer::{Counts, Progress, Start, consume};
use super::fence::ClusterFence;
use super::handover;
use super::keeper;
use super::ownership::Ownership;
use super::partition::Layout;
use super::stream::{bucket, connect, ensure_stream};
use crate::config::Config;
use crate::ingest::partition_feed::{Fed, FeedPlan};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::state::checkpoint::Checkpoint;
use crate::time::wall_now_ms;
use crate::topic::TopicPattern;

/// Items a partition's feed holds before its consumer waits.
const FEED_CAPACITY: usize = 4_096;
/// How often the loop looks at ownership changes, ticks and end conditions.
const POLL: Duration = Duration::from_millis(50);
/// A tick is published to `<subject>.<partition>.tick` with this header, which no device
/// can set (MQTT has no headers), so a reading on topic `tick` stays a reading.
pub(crate) const TICK_HEADER: &str = "Cityops-Tick";

/// A live run on a NATS JetStream stream, and when it ends.
#[derive(Debug, Clone)]
pub struct ClusterSource {
    /// `nats://host:4222` (several, comma-separated, for a cluster).
    pub url: String,
    /// End after this many readings (load runs, tests).
    pub max_messages: Option<u64>,
    /// End once no reading has come for this long, after the first (a partition taken
    /// counts as a reading: its stream is read first).
    pub idle_exit: Option<Duration>,
}

/// The instance's name in the leases: `[cluster] instance`, else `<host>-<pid>`.
pub(crate) fn instance_name(config: &Config) -> String {
    match config.cluster.instance.as_str() {
        "" => format!("{}-{}", crate::config::host_name(), std::process::id()),
        name => name.to_string(),
    }
}

/// Opens what the sink thread needs before the source starts: the ownership the keeper
/// will fill, and the fence over it with the shared delivery record. `whole_stream`: some
/// rule needs every partition's readings, so the whole-stream slot is leased too.
pub(crate) fn open_fence(
    source: &ClusterSource,
    config: &Config,
    whole_stream: bool,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<Ownership>, ClusterFence), String> {
    let pattern = TopicPattern::parse(&config.topics.pattern)?;
    let layout =
        Layout::new(&config.cluster.subject, config.cluster.partitions, pattern).with_whole_stream(whole_stream);
    // Half a lease: the previous holder notices its lease lapsed and settles what it sent.
    let grace = Duration::from_millis(config.cluster.lease.0.max(0) as u64 / 2);
    let ownership = Ownership::new(&instance_name(config), layout, grace, Arc::clone(metrics));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("delivery-record")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the delivery record: {e}"))?;
    let (record, checkpoints) = runtime.block_on(async {
        let client = connect(&source.url, &format!("{}-deliveries", ownership.instance)).await?;
        let js = jetstream::new(client);
        let record = bucket(
            &js,
            &config.cluster.deliveries_bucket,
            "cityops notifications sent",
            &config.cluster,
        )
        .await?;
        let checkpoints = match config.cluster.checkpoint_interval.0 {
            0 => None,
            _ => {
                let stream = ensure_stream(&js, &config.cluster, ownership.layout()).await?;
                Some(CheckpointStore::open(&js, &config.cluster, &stream).await?)
            }
        };
        Ok::<_, String>((record, checkpoints))
    })?;
    let fence = ClusterFence::new(
        Arc::clone(&ownership),
        record,
        checkpoints,
        runtime,
        Arc::clone(metrics),
    );
    Ok((ownership, fence))
}

/// What a partition's pipeline starts with.
pub(crate) struct PartitionStart {
    pub partition: u32,
    /// The lease epoch it runs under.
    pub epoch: u64,
    /// Its stream from `resume`'s `replay_from` (or from its first reading), in order.
    pub items: crossbeam_channel::Receiver<Fed>,
    /// The stored checkpoint it goes on from.
    pub resume: Option<Arc<Checkpoint>>,
    pub plan: FeedPlan,
}

/// Starts a partition's pipeline on a thread of its own, reading its items until they end
/// (the run wires it: `pipeline::partitions`).
pub(crate) type StartPartition<'a> = dyn Fn(PartitionStart) -> Result<std::thread::JoinHandle<()>, String> + 'a;

/// What the instance needs from its run.
pub(crate) struct Instance<'a> {
    pub config: &'a Config,
    pub metrics: Arc<Metrics>,
    pub ownership: Arc<Ownership>,
    pub start_partition: &'a StartPartition<'a>,
}

/// A partition this instance runs.
pub(super) struct Running {
    pub consumer: tokio::task::JoinHandle<()>,
    pipeline: std::thread::JoinHandle<()>,
    /// Its pipeline's input (the consumer holds a sender too): a handover's last cut.
    pub feed: crossbeam_channel::Sender<Fed>,
    /// The stream sequence its stored checkpoint covered when it started (0: none).
    pub resumed_seq: u64,
    /// Readings handed to its pipeline.
    readings: Arc<AtomicU64>,
    /// The stream sequence of the last item handed to its pipeline (0: none yet).
    pub fed_seq: Arc<AtomicU64>,
    /// Whether its consumer has read to the stream's end (nothing pending) and works.
    caught_up: Arc<AtomicBool>,
}

/// Runs the instance until its source ends (see the module docs for how).
pub(crate) fn run_instance(source: &ClusterSource, instance: Instance<'_>, shutdown: &Shutdown) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the NATS source: {e}"))?;
    runtime.block_on(run(source, instance, shutdown))
}

async fn run(source: &ClusterSource, instance: Instance<'_>, shutdown: &Shutdown) -> Result<(), String> {
    let config = instance.config;
    let ownership = Arc::clone(&instance.ownership);
    let client = connect(&source.url, &ownership.instance).await?;
    let js = jetstream::new(client);
    let stream = ensure_stream(&js, &config.cluster, ownership.layout()).await?;
    let checkpoints = match config.cluster.checkpoint_interval.0 {
        0 => None,
        _ => Some(CheckpointStore::open(&js, &config.cluster, &stream).await?),
    };
    let keeper = keeper::start(
        &source.url,
        &config.cluster,
        Arc::clone(&ownership),
        Arc::clone(&instance.metrics),
    )?;
    tracing::info!(
        instance = %ownership.instance,
        stream = %config.cluster.stream,
        partitions = config.cluster.partitions,
        "cluster: joined; taking a fair share of the partitions"
    );
    let progress = Arc::new(Progress::default());
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    let mut changes = ownership.watch();
    let mut next_tick_ms = 0;
    let handover = loop {
        // What is held and what runs agree after every change.
        if changes.has_changed().unwrap_or(false) || running.is_empty() {
            changes.mark_unchanged();
            handover::released(&mut running, &ownership, checkpoints.is_some()).await;
            let held = ownership.held();
            // A partition lost and claimed again between two looks (a new epoch) runs on:
            // its pipeline is exact, but stores no checkpoint (some of its warnings may have
            // been fenced meanwhile), and a takeover goes on from the last one stored. Stopping
            // it would close its windows early while the partition is held.
            for (partition, gone) in running.extract_if(.., |p, _| !held.contains_key(p)).collect::<Vec<_>>() {
                stop(partition, gone, &ownership).await;
            }
            let new: Vec<(u32, u64)> = held
                .iter()
                .filter(|(p, _)| !running.contains_key(p))
                .map(|(p, held)| (*p, held.epoch))
                .collect();
            // Their checkpoints are asked for together: a NATS that answers slowly holds
            // this loop (ticks, end conditions) one patience at most, not one per partition.
            let resumes = futures::future::join_all(new.iter().map(|(partition, _)| async {
                match &checkpoints {
                    Some(store) => store.load_patiently(*partition).await,
                    None => None,
                }
            }))
            .await;
            for ((partition, epoch), resume) in new.into_iter().zip(resumes) {
                let started = start(partition, epoch, resume, &stream, &instance, &progress)?;
                running.insert(partition, started);
            }
        }
        let now_ms = wall_now_ms();
        if now_ms >= next_tick_ms {
            write_ticks(&js, &ownership, running.keys().copied()).await;
            next_tick_ms = now_ms - now_ms.rem_euclid(1_000) + 1_000;
        }
        if shutdown.is_requested() {
            break true;
        }
        let readings = progress.readings.load(Relaxed);
        let last = progress.last_ms.load(Relaxed);
        // Idle means the input is over: nothing came for a while and every partition has
        // read its stream to the end (not a consumer stuck on a NATS failure).
        let idle = source
            .idle_exit
            .is_some_and(|limit| last > 0 && now_ms - last >= limit.as_millis() as i64)
            && running.values().all(|r| r.caught_up.load(Relaxed));
        if idle || source.max_messages.is_some_and(|m| readings >= m) {
            break false;
        }
        tokio::time::sleep(POLL).await;
    };
    if handover {
        // Each partition's state through its last reading is stored while its lease is
        // still held; then the fence: what the pipelines still compute is not sent.
        if checkpoints.is_some() {
            handover::last_checkpoints(&running, &ownership).await;
        }
        for partition in running.keys().copied().collect::<Vec<_>>() {
            ownership.lose(partition, false);
        }
    }
    for (partition, gone) in std::mem::take(&mut running) {
        stop(partition, gone, &ownership).await;
    }
    // What the partitions sent is settled and recorded before their leases go.
    ownership.drain().await;
    tokio::task::spawn_blocking(move || keeper.release_all())
        .await
        .map_err(|e| format!("the lease keeper: {e}"))?;
    let c = &instance.metrics.cluster;
    let (readings, seconds, rate) = progress.rate();
    tracing::info!(
        instance = %ownership.instance,
        handover,
        readings,
        first_reading_ms = progress.first_reading_ms.load(Relaxed),
        last_reading_ms = progress.last_reading_ms.load(Relaxed),
        takeovers = c.takeovers.load(Relaxed),
        leases_lost = c.leases_lost.load(Relaxed),
        fenced_warnings = c.fenced_warnings.load(Relaxed),
        already_sent = c.already_sent.load(Relaxed),
        record_errors = c.record_errors.load(Relaxed),
        "cluster: left; its partitions are given back; read {readings} messages in {seconds:.3} s (first to last): {rate:.0} messages/s"
    );
    Ok(())
}

/// Starts a partition: its pipeline on a thread of its own, and its consumer, from `resume`
/// when a checkpoint was stored.
fn start(
    partition: u32,
    epoch: u64,
    resume: Option<Checkpoint>,
    stream: &stream::Stream,
    instance: &Instance<'_>,
    progress: &Arc<Progress>,
) -> Result<Running, String> {
    let (feed, items) = crossbeam_channel::bounded(FEED_CAPACITY);
    let interval = instance.config.cluster.checkpoint_interval.0;
    let plan = FeedPlan {
        covers_seq: resume.as_ref().map_or(0, |c| c.covers_seq),
        next_tick_ms: resume.as_ref().and_then(|c| c.next_tick_ms),
        next_checkpoint: resume.as_ref().map_or(1, |c| c.number + 1),
        checkpoint_every: (interval > 0).then(|| Duration::from_millis(interval as u64)),
    };
    let from_seq = resume.as_ref().map_or(1, |c| c.replay_from);
    let whole_stream = instance.ownership.layout().is_whole_stream(partition);
    let what = match whole_stream {
        true => format!("the whole stream (slot {partition}, for the rules over many devices)"),
        false => format!("partition {partition}"),
    };
    match &resume {
        Some(checkpoint) => {
            instance.metrics.cluster.resumed.fetch_add(1, Relaxed);
            tracing::info!(
                partition,
                checkpoint = checkpoint.number,
                covers_seq = checkpoint.covers_seq,
                replay_from = checkpoint.replay_from,
                "cluster: consuming {what} from its checkpoint {} (through stream sequence {}; open windows refilled from {})",
                checkpoint.number,
                checkpoint.covers_seq,
                checkpoint.replay_from
            );
        }
        None => tracing::info!(partition, "cluster: consuming {what} from its first reading"),
    }
    let pipeline = (instance.start_partition)(PartitionStart {
        partition,
        epoch,
        items,
        resume: resume.map(Arc::new),
        plan,
    })?;
    // A partition just taken has its stream to read: the idle exit waits for it.
    progress.last_ms.store(wall_now_ms(), Relaxed);
    let readings = Arc::new(AtomicU64::new(0));
    let fed_seq = Arc::new(AtomicU64::new(0));
    let caught_up = Arc::new(AtomicBool::new(false));
    let consumer = tokio::spawn(consume(
        Start { partition, from_seq },
        stream.clone(),
        Arc::clone(&instance.ownership),
        feed.clone(),
        Arc::clone(progress),
        Counts {
            readings: Arc::clone(&readings),
            fed_seq: Arc::clone(&fed_seq),
            caught_up: Arc::clone(&caught_up),
        },
        Arc::clone(&instance.metrics),
    ));
    Ok(Running {
        consumer,
        pipeline,
        feed,
        resumed_seq: plan.covers_seq,
        readings,
        fed_seq,
        caught_up,
    })
}

/// Stops a partition: its consumer ends and its feed closes, so its pipeline ends.
pub(super) async fn stop(partition: u32, running: Running, ownership: &Ownership) {
    running.consumer.abort();
    let _ = running.consumer.await;
    drop(running.feed);
    let _ = tokio::task::spawn_blocking(move || running.pipeline.join()).await;
    ownership.stopped(partition);
    tracing::info!(
        partition,
        readings = running.readings.load(Relaxed),
        "cluster: partition {partition} stopped"
    );
}

/// Writes a tick into each partition held here whose lease is valid.
async fn write_ticks(js: &jetstream::Context, ownership: &Ownership, partitions: impl Iterator<Item = u32>) {
    let now = Instant::now();
    let mut acks = Vec::new();
    // The whole-stream slot reads every partition's ticks: it has none of its own.
    let layout = ownership.layout();
    for partition in partitions.filter(|p| !layout.is_whole_stream(*p) && ownership.admits(*p, now)) {
        let subject = format!("{}.{partition}.tick", layout.subject());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TICK_HEADER, "1");
        if let Ok(ack) = js.publish_with_headers(subject, headers, bytes::Bytes::new()).await {
            acks.push(ack);
        }
    }
    for ack in acks {
        let _ = ack.await;
    }
}
