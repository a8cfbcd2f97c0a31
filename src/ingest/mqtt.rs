//! The live MQTT source: subscribes with rumqttc and hands each message to the decode
//! queues. It runs on its own thread with a single-threaded tokio runtime, so when a
//! decode queue is full the handoff waits and the socket is not read: the broker holds the
//! backlog (QoS 1) instead of cityops dropping anything. The messages of one socket read go
//! to the workers as one burst each; a QoS 1 message is acknowledged only after its burst
//! is in a decode queue, and acks go out in batches (`acks`). A lost connection is retried
//! with exponential backoff; every connect resubscribes; outages are logged and counted.
//! Clock ticks go to the decode workers every second of wall time so silent tables advance.
//!
//! With state (`Logged`), each socket read goes to the log stage (`wal`) instead, and so do
//! the ticks; a message is acked once the log has made it durable, on the connection it came
//! on. A redelivery of a message the log already holds is acked and not logged again, and a
//! connect that finds the expected session gone is reported.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, PubAck, QoS, SubscribeFilter, SubscribeReasonCode};

use super::acks::PendingAcks;
use super::replay::TICK_MS;
use super::takeover::{Dropped, TakeoverWatch};
use super::wal::{Ack, Intake};
use crate::broker::{self, BrokerUrl};
use crate::config::{Config, MqttConfig};
use crate::flow::{Closed, Ingest, Message};
use crate::metrics::Metrics;
use crate::queue::{Bursts, Handoff};
use crate::shutdown::Shutdown;
use crate::time::wall_now_ms;
use crate::topic::TopicPattern;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Reconnects slow down to this while another client keeps taking the client id.
const TAKEOVER_BACKOFF: Duration = Duration::from_secs(30);
/// How often the source looks at the clock (ticks, stop conditions) while the broker is quiet.
const POLL_CLOCK: Duration = Duration::from_millis(100);

/// A live subscription and when it ends.
#[derive(Debug, Clone)]
pub struct MqttSource {
    pub url: BrokerUrl,
    pub config: MqttConfig,
    /// Subscriptions (already derived from the topic pattern when the config has none).
    pub filters: Vec<String>,
    /// End after this many messages (load tests, integration tests).
    pub max_messages: Option<u64>,
    /// End once no message has come for this long, after the first one.
    pub idle_exit: Option<Duration>,
}

impl MqttSource {
    /// A subscription to `url` with the config's settings; without configured filters, one
    /// filter per table from the topic pattern (`city/+/water/+`).
    pub fn new(url: BrokerUrl, config: &Config) -> Result<Self, String> {
        broker::qos(config.mqtt.qos)?;
        let filters = if config.mqtt.filters.is_empty() {
            let pattern = TopicPattern::parse(&config.topics.pattern)?;
            config
                .catalog()
                .tables()
                .iter()
                .map(|t| pattern.filter_for(&t.name))
                .collect()
        } else {
            config.mqtt.filters.clone()
        };
        let mut settled = config.clone();
        settled.settle_client_id();
        Ok(MqttSource {
            url,
            config: settled.mqtt,
            filters,
            max_messages: None,
            idle_exit: None,
        })
    }
}

/// Why the source could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MqttError {
    #[error("mqtt: {0}")]
    Setup(String),
    #[error(transparent)]
    Closed(#[from] Closed),
}

/// A run that keeps state: messages and ticks go through the write-ahead log, whose stage
/// hands back the acks of what it made durable.
pub(crate) struct Logged {
    pub intake: crossbeam_channel::Sender<Intake>,
    pub acks: tokio::sync::mpsc::UnboundedReceiver<Vec<Ack>>,
    /// Whether the broker should still hold this client's session from an earlier run.
    pub expects_session: bool,
    /// The last messages the log holds: the broker sends again those it had no ack for.
    pub recent: RecentMessages,
}

/// Fingerprints (topic and payload) of the messages logged last, so that a redelivery of a
/// message the log already holds (its ack was lost in a crash or a dropped connection) is
/// acked and not logged twice.
#[derive(Debug, Default)]
pub(crate) struct RecentMessages {
    order: std::collections::VecDeque<u64>,
    counts: std::collections::HashMap<u64, u32>,
}

impl RecentMessages {
    /// How many fingerprints are kept (well above any broker's in-flight window).
    const KEEP: usize = 65_536;

    pub(crate) fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
        (u64::from(crc32fast::hash(topic.as_bytes())) << 32) | u64::from(crc32fast::hash(payload))
    }

    pub(crate) fn remember(&mut self, fingerprint: u64) {
        self.order.push_back(fingerprint);
        *self.counts.entry(fingerprint).or_default() += 1;
        if self.order.len() > Self::KEEP
            && let Some(old) = self.order.pop_front()
            && let Some(count) = self.counts.get_mut(&old)
        {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&old);
            }
        }
    }

    fn contains(&self, fingerprint: u64) -> bool {
        self.counts.contains_key(&fingerprint)
    }
}

/// Reads messages until `shutdown` is requested or a configured end is reached; returns the
/// count. With `logged`, messages go through the write-ahead log and are acked once durable.
pub(crate) fn subscribe(
    source: &MqttSource,
    handoff: &Handoff,
    metrics: &Metrics,
    shutdown: &Shutdown,
    logged: Option<Logged>,
) -> Result<u64, MqttError> {
    let qos = broker::qos(source.config.qos).map_err(MqttError::Setup)?;
    let mut options =
        broker::options(&source.url, &source.config, &source.config.client_id).map_err(MqttError::Setup)?;
    options.set_manual_acks(true);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MqttError::Setup(format!("starting the source runtime: {e}")))?;
    let capacity = usize::from(source.config.inflight).max(10) * 4;
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let filters: Vec<SubscribeFilter> = source
        .filters
        .iter()
        .map(|f| SubscribeFilter::new(f.clone(), qos))
        .collect();
    let ending = AtomicBool::new(false);
    let finished = AtomicBool::new(false);
    // Wall ms (pipeline clock) of the latest message; 0 before the first.
    let last_message_ms = AtomicU64::new(0);
    let first_message_ms = AtomicU64::new(0);
    let count = AtomicU64::new(0);
    let (intake, mut committed, expects_session, recent) = match logged {
        Some(l) => (Some(l.intake), Some(l.acks), l.expects_session, l.recent),
        None => (None, None, false, RecentMessages::default()),
    };
    let ticks_to = intake.clone();
    std::thread::scope(|scope| {
        // The clock runs beside the event loop, never cancelling its poll (a poll dropped
        // while rumqttc writes a request can lose it; `poll_loop` drops one only while the
        // socket read is all that is pending).
        let clock = std::thread::Builder::new()
            .name("mqtt-clock".to_string())
            .spawn_scoped(scope, || {
                let mut next_tick_ms = TICK_MS;
                while !finished.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL_CLOCK);
                    let now_ms = wall_now_ms();
                    if now_ms >= next_tick_ms {
                        let sent = match &ticks_to {
                            Some(intake) => intake.send(Intake::Tick(now_ms)).is_ok(),
                            None => handoff.broadcast(|| Ingest::Tick { now_ms }).is_ok(),
                        };
                        if !sent {
                            break;
                        }
                        next_tick_ms = now_ms - now_ms.rem_euclid(TICK_MS) + TICK_MS;
                    }
                    let now_ms = (metrics.now_ns() / 1_000_000) as i64;
                    let last = last_message_ms.load(Ordering::Relaxed) as i64;
                    let idle_over = source
                        .idle_exit
                        .is_some_and(|limit| last > 0 && now_ms - last >= limit.as_millis() as i64);
                    let enough = source.max_messages.is_some_and(|m| count.load(Ordering::Relaxed) >= m);
                    if (shutdown.is_requested() || idle_over || enough) && !ending.swap(true, Ordering::Relaxed) {
                        // Wakes the event loop; it ends at its next event.
                        let _ = client.try_disconnect();
                    }
                }
            });
        let polled = runtime.block_on(poll_loop(
            source,
            &client,
            &mut eventloop,
            &filters,
            handoff,
            metrics,
            &ending,
            &first_message_ms,
            &last_message_ms,
            &count,
            intake,
            committed.as_mut(),
            expects_session,
            recent,
        ));
        finished.store(true, Ordering::Relaxed);
        if let Err(e) = clock {
            tracing::error!(error = %e, "could not start the mqtt clock thread (the system is out of threads or memory: raise the process limit, ulimit -u, or free memory, then restart)");
        }
        metrics.mqtt_connected.store(false, Ordering::Relaxed);
        let (n, first, last) = (
            count.load(Ordering::Relaxed),
            first_message_ms.load(Ordering::Relaxed),
            last_message_ms.load(Ordering::Relaxed),
        );
        if n > 1 && last > first {
            let seconds = (last - first) as f64 / 1_000.0;
            tracing::info!(
                "mqtt: received {n} messages in {seconds:.3} s (first to last): {:.0} messages/s",
                (n - 1) as f64 / seconds
            );
        }
        polled.map(|()| n)
    })
}

/// Drives the connection until `ending` is set (or the pipeline closes).
#[allow(clippy::too_many_arguments)]
async fn poll_loop(
    source: &MqttSource,
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    filters: &[SubscribeFilter],
    handoff: &Handoff,
    metrics: &Metrics,
    ending: &AtomicBool,
    first_message_ms: &AtomicU64,
    last_message_ms: &AtomicU64,
    count: &AtomicU64,
    intake: Option<crossbeam_channel::Sender<Intake>>,
    mut committed: Option<&mut tokio::sync::mpsc::UnboundedReceiver<Vec<Ack>>>,
    expects_session: bool,
    mut recent: RecentMessages,
) -> Result<(), MqttError> {
    // Acks handed back for this connection only; a reconnect starts a new one.
    let mut connection: u64 = 0;
    // Messages handed to the log whose acks have not come back.
    let mut awaiting: usize = 0;
    let mut backoff = MIN_BACKOFF;
    let mut lost_at: Option<Instant> = None;
    let mut takeover = TakeoverWatch::default();
    // A reconnect expects the session back too (with `clean_session = false`).
    let mut expects_session = expects_session && !source.config.clean_session;
    // Acks of messages already in the pipeline. They go out together, in order, once a batch
    // waits or the oldest reaches its delay (rumqttc's own manual acks would take one
    // event-loop turn and one flush each, which stalls the broker's in-flight window). QoS 2
    // acks change the session state, so they go after every read.
    let batch = if source.config.qos == 1 {
        source.config.ack_batch
    } else {
        1
    };
    let delay = Duration::from_millis(source.config.ack_delay.0.max(0) as u64);
    let mut acks = PendingAcks::new(batch, delay);
    let mut bursts = Bursts::new(handoff);
    // With the log: the messages of the current socket read, handed over together.
    let mut read: Vec<Intake> = Vec::new();
    while !ending.load(Ordering::Relaxed) {
        let read_consumed = eventloop.state.events.is_empty();
        if read_consumed {
            // The last read is consumed: its messages go to the pipeline, then the acks out
            // if they are due.
            bursts.flush(handoff)?;
            hand_over(&intake, &mut read)?;
            if acks.due(Instant::now()) {
                send_acks(client, eventloop, &mut acks).await;
            }
        }
        // Waiting acks bound the wait for the next read. Dropping rumqttc's poll there is
        // safe: with the source's acks written here, its only pending point is the socket
        // read, whose bytes its codec keeps (a pending ping or subscribe stays buffered).
        // With the log, the acks the log stage hands back wake the loop the same way.
        let polled = match (acks.deadline(), committed.as_deref_mut()) {
            (_, Some(committed)) if read_consumed => {
                tokio::select! {
                    polled = eventloop.poll() => polled,
                    durable = committed.recv() => {
                        if let Some(durable) = durable {
                            awaiting = awaiting.saturating_sub(durable.len());
                            take_durable(&mut acks, durable, connection);
                            send_acks(client, eventloop, &mut acks).await;
                        }
                        continue;
                    }
                }
            }
            (Some(deadline), None) if read_consumed => {
                match tokio::time::timeout_at(deadline.into(), eventloop.poll()).await {
                    Ok(polled) => polled,
                    Err(_) => continue,
                }
            }
            _ => eventloop.poll().await,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                if expects_session && !connack.session_present {
                    metrics.state.session_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        broker = %source.url.host,
                        client_id = %source.config.client_id,
                        "mqtt: the broker no longer holds this client's session: QoS 1 messages published while cityops was away are lost. Give the broker persistence (mosquitto: `persistence true`) and a session expiry longer than any outage"
                    );
                }
                expects_session = !source.config.clean_session;
                metrics.mqtt_connected.store(true, Ordering::Relaxed);
                takeover.connected(Instant::now());
                match lost_at.take() {
                    Some(at) => {
                        let outage = at.elapsed();
                        metrics
                            .mqtt_outage_ms
                            .fetch_add(outage.as_millis() as u64, Ordering::Relaxed);
                        // While a takeover goes on, its report says it all.
                        if !takeover.suspected() {
                            tracing::info!(broker = %source.url.host, outage_ms = outage.as_millis() as u64, "mqtt reconnected; resubscribing");
                        }
                    }
                    None => {
                        tracing::info!(broker = %source.url.host, port = source.url.port, filters = ?source.filters, "mqtt connected")
                    }
                }
                // Subscribing on every connect covers brokers that lost the session.
                if let Err(e) = client.try_subscribe_many(filters.to_vec()) {
                    tracing::error!(error = %e, "mqtt subscribe could not be queued; no messages arrive until the next reconnect (check mqtt.filters for malformed wildcards, or restart cityops)");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::error!(codes = ?ack.return_codes, "the broker refused a subscription (check the broker's ACL for this user and the filters in mqtt.filters or topics.pattern)");
                } else {
                    metrics.mqtt_subscribed.store(true, Ordering::Relaxed);
                }
            }
            Ok(Event::Incoming(Packet::Publish(mut publish))) => {
                let arrived_ns = metrics.now_ns();
                let wall_ms = wall_now_ms();
                // The topic and payload move into the pipeline; what stays is enough to ack.
                let msg = Message {
                    at_ms: wall_ms,
                    payload: std::mem::take(&mut publish.payload),
                    topic: std::mem::take(&mut publish.topic),
                    recorded_invalid: false,
                    arrived_ns,
                    received_ms: wall_ms,
                    seq: 0,
                    rebuild: false,
                };
                let ack = (publish.qos != QoS::AtMostOnce).then_some(publish);
                match &intake {
                    // Acked once the log has it (the log stage hands the ack back).
                    Some(_) => {
                        let fingerprint = RecentMessages::fingerprint(&msg.topic, &msg.payload);
                        let ack = ack.map(|publish| Ack { connection, publish });
                        awaiting += usize::from(ack.is_some());
                        let item = match ack {
                            Some(ack) if ack.publish.dup && recent.contains(fingerprint) => {
                                metrics.state.redeliveries_skipped.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(topic = %msg.topic, "mqtt: a redelivered message the log already holds; acked, not logged again");
                                Intake::AckOnly(ack)
                            }
                            ack => {
                                recent.remember(fingerprint);
                                metrics.messages_in.fetch_add(1, Ordering::Relaxed);
                                Intake::Message(msg, ack)
                            }
                        };
                        read.push(item);
                    }
                    None => {
                        metrics.messages_in.fetch_add(1, Ordering::Relaxed);
                        let worker = handoff.worker_for(msg.topic.as_bytes());
                        // Waits while the queue is full: the socket is not read meanwhile.
                        bursts.push(handoff, worker, msg)?;
                        if let Some(publish) = ack {
                            // The arrival clock read above, as an instant: no second read per message.
                            acks.push(publish, metrics.started() + Duration::from_nanos(arrived_ns));
                        }
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
                let now_ms = (arrived_ns / 1_000_000).max(1);
                let _ = first_message_ms.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
                last_message_ms.store(now_ms, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                if ending.load(Ordering::Relaxed) {
                    break;
                }
                metrics.mqtt_connected.store(false, Ordering::Relaxed);
                metrics.mqtt_subscribed.store(false, Ordering::Relaxed);
                metrics.mqtt_connection_errors.fetch_add(1, Ordering::Relaxed);
                // What was read before the loss is genuine and goes on; its acks cannot
                // travel on the next connection, so the broker redelivers those messages.
                bursts.flush(handoff)?;
                hand_over(&intake, &mut read)?;
                acks.clear();
                connection += 1;
                let dropped = takeover.dropped(Instant::now());
                if dropped == Dropped::Ordinary {
                    backoff = MIN_BACKOFF;
                }
                if let Dropped::Takeover { report, cuts } = dropped {
                    metrics.mqtt_takeovers.fetch_add(1, Ordering::Relaxed);
                    if report {
                        tracing::error!(
                            broker = %source.url.host,
                            client_id = %source.config.client_id,
                            cuts,
                            "mqtt: the broker keeps closing this connection right after accepting it: most likely another client is connected with the same client id (a session takeover), and each connect throws the other off. Give every instance its own `[mqtt] client_id`, or leave it empty for a per-instance id; if no other client has this id, check the broker's log (an ACL or packet-size refusal closes connections too). Meanwhile reconnects back off up to {}s",
                            TAKEOVER_BACKOFF.as_secs()
                        );
                    }
                }
                if lost_at.is_none() {
                    lost_at = Some(Instant::now());
                    if !takeover.suspected() {
                        tracing::warn!(broker = %source.url.host, error = %e, "mqtt connection lost; reconnecting with backoff (check that the --mqtt broker is up and reachable and the mqtt credentials are right)");
                    } else {
                        tracing::debug!(broker = %source.url.host, error = %e, "mqtt connection lost during a suspected takeover");
                    }
                }
                tokio::time::sleep(backoff).await;
                let most = if takeover.suspected() {
                    TAKEOVER_BACKOFF
                } else {
                    MAX_BACKOFF
                };
                backoff = (backoff * 2).min(most);
            }
        }
    }
    // Ending: what was read goes in, and its acks go out ahead of the queued disconnect.
    bursts.flush(handoff)?;
    hand_over(&intake, &mut read)?;
    if let Some(committed) = committed {
        // Everything handed to the log is acked once durable (the log stage runs on).
        drop(intake);
        let deadline = Instant::now() + Duration::from_secs(10);
        while awaiting > 0 {
            match tokio::time::timeout_at(deadline.into(), committed.recv()).await {
                Ok(Some(durable)) => {
                    awaiting = awaiting.saturating_sub(durable.len());
                    take_durable(&mut acks, durable, connection);
                }
                _ => break,
            }
        }
    }
    if !acks.is_empty() {
        send_acks(client, eventloop, &mut acks).await;
    }
    Ok(())
}

/// Hands the messages of one socket read to the log stage in one piece.
fn hand_over(intake: &Option<crossbeam_channel::Sender<Intake>>, read: &mut Vec<Intake>) -> Result<(), Closed> {
    match intake {
        Some(intake) if !read.is_empty() => intake.send(Intake::Batch(std::mem::take(read))).map_err(|_| Closed),
        _ => Ok(()),
    }
}

/// Queues the acks the log made durable that belong to this connection; those of an
/// earlier one are dropped (the broker sends those messages again).
fn take_durable(acks: &mut PendingAcks, durable: Vec<Ack>, connection: u64) {
    let now = Instant::now();
    for ack in durable.into_iter().filter(|a| a.connection == connection) {
        acks.push(ack.publish, now);
    }
}

/// Sends the waiting acks in one write: QoS 1 `PubAck`s straight onto the connection, QoS 2
/// through the client (its `PubRec` changes the session state). A failed write leaves them
/// to the broker's redelivery; the next poll sees the broken connection and reconnects.
async fn send_acks(client: &AsyncClient, eventloop: &mut rumqttc::EventLoop, acks: &mut PendingAcks) {
    let waiting = acks.take();
    let Some(network) = eventloop.network.as_mut() else {
        return;
    };
    for publish in waiting {
        let written = match publish.qos {
            QoS::AtLeastOnce => network.write(Packet::PubAck(PubAck::new(publish.pkid))).await.is_ok(),
            _ => client.try_ack(&publish).is_ok(),
        };
        if !written {
            tracing::warn!(
                pkid = publish.pkid,
                "mqtt ack could not be sent; the broker will redeliver (the connection dropped; if this repeats, check the network to the broker)"
            );
        }
    }
    if let Err(e) = network.flush().await {
        tracing::warn!(error = %e, "mqtt acks could not be flushed; the broker will redeliver (the connection dropped; if this repeats, check the network to the broker)");
    }
}
