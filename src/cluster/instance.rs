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
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use super::checkpoints::CheckpointStore;
use super::fence::ClusterFence;
use super::handover;
use super::keeper;
use super::ownership::Ownership;
use super::partition::Layout;
use super::stream::{bucket, connect, ensure_stream};
use crate::config::Config;
use crate::flow::Message;
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
/// Readings one pull asks for.
const BATCH: usize = 1_000;
/// The longest wait before a partition's consumer is created again after failures.
const RETRY: Duration = Duration::from_secs(1);
/// How long a pull waits for its server (a pull expires after 1 s): longer means the
/// server is gone, and the consumer is made again.
const PULL_SILENCE: Duration = Duration::from_secs(5);
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

/// Which partition a consumer reads, from which stream sequence.
struct Start {
    partition: u32,
    from_seq: u64,
}

/// One partition consumer's counts.
struct Counts {
    readings: Arc<AtomicU64>,
    fed_seq: Arc<AtomicU64>,
    caught_up: Arc<AtomicBool>,
}

/// Counts shared by the partitions' consumers.
#[derive(Debug, Default)]
struct Progress {
    readings: AtomicU64,
    /// Wall ms of the last reading or of the last partition started, 0 before either: what
    /// the idle exit counts from.
    last_ms: AtomicI64,
    /// Wall ms of the first and the last reading handed over, 0 before the first: the rate
    /// reported when the instance leaves.
    first_reading_ms: AtomicI64,
    last_reading_ms: AtomicI64,
}

impl Progress {
    /// Counts a reading handed over now.
    fn reading(&self) {
        let now_ms = wall_now_ms();
        self.readings.fetch_add(1, Relaxed);
        self.last_ms.store(now_ms, Relaxed);
        let _ = self.first_reading_ms.compare_exchange(0, now_ms, Relaxed, Relaxed);
        self.last_reading_ms.store(now_ms, Relaxed);
    }

    /// Readings handed over, seconds from the first to the last, and their rate.
    fn rate(&self) -> (u64, f64, f64) {
        let readings = self.readings.load(Relaxed);
        let seconds = (self.last_reading_ms.load(Relaxed) - self.first_reading_ms.load(Relaxed)).max(0) as f64 / 1e3;
        let rate = match seconds > 0.0 {
            true => readings as f64 / seconds,
            false => 0.0,
        };
        (readings, seconds, rate)
    }
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

/// Reads one partition from stream sequence `from_seq` into its feed, in stream order. The
/// position is kept here (the next stream sequence to hand over), and the consumer, an
/// ephemeral one without acks, is created again from it after any error (a NATS node gone,
/// the consumer with it): no reading is skipped or handed over twice. While the lease has
/// lapsed here (NATS unreachable, the process stalled) it waits: it either renews and goes
/// on where it was, or is found taken and is stopped.
async fn consume(
    Start { partition, from_seq }: Start,
    stream: stream::Stream,
    ownership: Arc<Ownership>,
    feed: crossbeam_channel::Sender<Fed>,
    progress: Arc<Progress>,
    counts: Counts,
    metrics: Arc<Metrics>,
) {
    let layout = ownership.layout().clone();
    let mut next: u64 = from_seq.max(1);
    let mut failures = 0u32;
    loop {
        if failures > 0 {
            tokio::time::sleep(RETRY.min(POLL * failures)).await;
        }
        let config = consumer::pull::Config {
            filter_subject: layout.partition_filter(partition),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: next },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        };
        counts.caught_up.store(false, Relaxed);
        let consumer = match stream.create_consumer(config).await {
            Ok(consumer) => consumer,
            Err(e) => {
                failures += 1;
                if failures % 20 == 1 {
                    tracing::warn!(partition, error = %e, "cluster: cannot read partition {partition}; retrying (check the NATS servers)");
                }
                continue;
            }
        };
        // Within one consumer, delivery numbers run 1, 2, 3…: a gap means messages were lost
        // on the way (a reconnect), and the consumer is made again from `next`.
        let mut delivered = 0u64;
        loop {
            let batch = consumer
                .batch()
                .max_messages(BATCH)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(_) => {
                    failures += 1;
                    break;
                }
            };
            let (mut broken, mut pending, mut received) = (false, 0, false);
            // The pull's end comes from the server: one gone with its node never sends it.
            while let Some(message) = match tokio::time::timeout(PULL_SILENCE, batch.next()).await {
                Ok(next) => next,
                Err(_) => Some(Err("no answer from the server".into())),
            } {
                received = true;
                let Ok(message) = message else {
                    broken = true;
                    break;
                };
                let Ok(info) = message.info() else {
                    broken = true;
                    break;
                };
                if info.consumer_sequence != delivered + 1 {
                    broken = true;
                    break;
                }
                delivered = info.consumer_sequence;
                if info.stream_sequence < next {
                    continue;
                }
                next = info.stream_sequence + 1;
                let at_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
                pending = info.pending;
                while !ownership.admits(partition, Instant::now()) {
                    metrics.cluster.fenced_messages.fetch_add(1, Relaxed);
                    tokio::time::sleep(POLL).await;
                }
                let tick = message.headers.as_ref().is_some_and(|h| h.get(TICK_HEADER).is_some());
                let seq = info.stream_sequence;
                let item = match layout.topic_of_subject(message.subject.as_str()) {
                    _ if tick => Fed::Tick { at_ms, seq },
                    Some((_, topic)) => Fed::Message(reading(at_ms, seq, topic, message.payload.clone())),
                    // Not of this layout (someone else published under the subject): the
                    // pipeline dead-letters it by its topic.
                    None => Fed::Message(reading(
                        at_ms,
                        seq,
                        message.subject.to_string(),
                        message.payload.clone(),
                    )),
                };
                let is_reading = matches!(item, Fed::Message(_));
                if !send(&feed, item).await {
                    return;
                }
                counts.fed_seq.store(seq, Relaxed);
                if is_reading {
                    counts.readings.fetch_add(1, Relaxed);
                    progress.reading();
                }
                failures = 0;
            }
            // An empty pull is either the end of the partition or a consumer gone with its
            // NATS node (pulls from it end empty, silently): the server tells which, and
            // whether it delivered anything that never arrived here.
            if !broken && !received {
                match consumer.get_info().await {
                    Ok(info) if info.delivered.consumer_sequence == delivered => pending = info.num_pending,
                    _ => broken = true,
                }
            }
            if broken {
                failures += 1;
                break;
            }
            // A whole pull without error, ending with nothing pending: read to the end.
            counts.caught_up.store(pending == 0, Relaxed);
            metrics.cluster.lag.lock().insert(partition, pending);
        }
    }
}

/// A reading stored at `at_ms` (stream time) at stream sequence `seq`. It counts as
/// received when the stream stored it, so whichever instance reads it, and whenever, judges
/// it against the same clock (readings too far ahead).
fn reading(at_ms: i64, seq: u64, topic: String, payload: bytes::Bytes) -> Message {
    Message {
        at_ms,
        topic,
        payload,
        recorded_invalid: false,
        arrived_ns: 0,
        received_ms: at_ms,
        seq,
        rebuild: false,
    }
}

/// Hands an item to the partition's pipeline, waiting (without holding the runtime) while
/// its feed is full; false once the pipeline is gone.
pub(super) async fn send(feed: &crossbeam_channel::Sender<Fed>, mut item: Fed) -> bool {
    loop {
        match feed.try_send(item) {
            Ok(()) => return true,
            Err(crossbeam_channel::TrySendError::Full(back)) => {
                item = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
        }
    }
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
