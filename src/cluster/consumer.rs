//! A partition's consumer on a cluster instance: it reads the partition's subjects from a
//! stream sequence into the partition's feed, in stream order, through NATS failures and
//! lapsed leases, and counts what it hands over.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;

use super::instance::TICK_HEADER;
use super::ownership::Ownership;
use crate::flow::Message;
use crate::ingest::partition_feed::Fed;
use crate::metrics::Metrics;
use crate::time::wall_now_ms;

/// How often a consumer whose lease has lapsed looks again; the step of its retry backoff.
const POLL: Duration = Duration::from_millis(50);

/// Readings one pull asks for.
const BATCH: usize = 1_000;
/// The longest wait before a partition's consumer is created again after failures.
const RETRY: Duration = Duration::from_secs(1);
/// How long a pull waits for its server (a pull expires after 1 s): longer means the
/// server is gone, and the consumer is made again.
const PULL_SILENCE: Duration = Duration::from_secs(5);

/// Which partition a consumer reads, from which stream sequence.
pub(super) struct Start {
    pub partition: u32,
    pub from_seq: u64,
}

/// One partition consumer's counts.
pub(super) struct Counts {
    pub readings: Arc<AtomicU64>,
    pub fed_seq: Arc<AtomicU64>,
    pub caught_up: Arc<AtomicBool>,
}

/// Counts shared by the partitions' consumers.
#[derive(Debug, Default)]
pub(super) struct Progress {
    pub readings: AtomicU64,
    /// Wall ms of the last reading or of the last partition started, 0 before either: what
    /// the idle exit counts from.
    pub last_ms: AtomicI64,
    /// Wall ms of the first and the last reading handed over, 0 before the first: the rate
    /// reported when the instance leaves.
    pub first_reading_ms: AtomicI64,
    pub last_reading_ms: AtomicI64,
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
    pub(super) fn rate(&self) -> (u64, f64, f64) {
        let readings = self.readings.load(Relaxed);
        let seconds = (self.last_reading_ms.load(Relaxed) - self.first_reading_ms.load(Relaxed)).max(0) as f64 / 1e3;
        let rate = match seconds > 0.0 {
            true => readings as f64 / seconds,
            false => 0.0,
        };
        (readings, seconds, rate)
    }
}

/// Reads one partition from stream sequence `from_seq` into its feed, in stream order. The
/// position is kept here (the next stream sequence to hand over), and the consumer, an
/// ephemeral one without acks, is created again from it after any error (a NATS node gone,
/// the consumer with it): no reading is skipped or handed over twice. While the lease has
/// lapsed here (NATS unreachable, the process stalled) it waits: it either renews and goes
/// on where it was, or is found taken and is stopped.
pub(super) async fn consume(
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
