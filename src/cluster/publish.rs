//! `cityops replay FILE --to-nats URL`: publishes a fixture into the stream (created or
//! checked first), each reading on its partition's subject, at the recorded speed, scaled,
//! at a fixed rate or as fast as JetStream acknowledges. It ends once JetStream has
//! acknowledged (stored) every reading; one whose acknowledgement is lost (a node gone) is
//! sent again under the same `Nats-Msg-Id`, which JetStream stores once, with the rest of
//! its window, in order. A topic NATS cannot carry is skipped and counted.
//!
//! Order: where a node's loss takes the end of the window with it (what a connection had
//! not yet delivered), the stream keeps the fixture's order. Where it takes a reading
//! whose successors were stored (a connection moved to another server mid-window), those
//! successors stay ahead of it: JetStream cannot insert behind them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;

use super::partition::Layout;
use super::stream::{connect, ensure_stream};
use crate::config::Config;
use crate::ingest::fixture::FixtureReader;
use crate::ingest::replay::Speed;
use crate::time::wall_now_ms;
use crate::topic::TopicPattern;

/// Publications awaiting JetStream's acknowledgement before the next waits.
const IN_FLIGHT: usize = 2_000;
/// How long one reading whose acknowledgement does not come (a NATS node gone, its
/// streams electing a new leader) is tried before the publisher gives up.
const PATIENCE: Duration = Duration::from_secs(60);
/// The longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// A reading sent, with what sending it again takes.
type Publication = (PublishAckFuture, String, String, bytes::Bytes);

async fn send(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    payload: &bytes::Bytes,
) -> Result<PublishAckFuture, String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers(subject.to_string(), headers, payload.clone())
        .await
        .map_err(|e| format!("publishing to NATS: {e}"))
}

/// Waits for the oldest acknowledgements until at most `keep` readings are in flight. One
/// that does not come was lost with a node, and likely the rest of the window after it:
/// all of it is stored again in order, one reading at a time (one acknowledgement timeout,
/// not one per reading; those already stored are dropped as duplicates), so the stream
/// keeps the fixture's order where what was lost is the end of the window.
async fn settle(js: &jetstream::Context, waiting: &mut VecDeque<Publication>, keep: usize) -> Result<(), String> {
    while waiting.len() > keep {
        let Some((ack, subject, id, payload)) = waiting.pop_front() else {
            break;
        };
        if ack.await.is_err() {
            store(js, &subject, &id, &payload).await?;
            for (_, subject, id, payload) in waiting.drain(..) {
                store(js, &subject, &id, &payload).await?;
            }
        }
    }
    Ok(())
}

/// Sends a reading and waits for JetStream to store it, trying again with a growing pause
/// for up to `PATIENCE` (a node lost, its streams electing a new leader). JetStream stores
/// an id once: a reading already stored is acknowledged as a duplicate.
async fn store(js: &jetstream::Context, subject: &str, id: &str, payload: &bytes::Bytes) -> Result<(), String> {
    let started = Instant::now();
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(pause).await;
        let last = match send(js, subject, id, payload).await {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            },
            Err(e) => e,
        };
        if started.elapsed() >= PATIENCE {
            return Err(format!(
                "JetStream did not store a reading within {} s: {last}",
                PATIENCE.as_secs()
            ));
        }
        pause = (pause + Duration::from_millis(200)).min(MAX_PAUSE);
    }
}

/// What a publishing run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    pub messages: u64,
    /// Readings whose topic is not a valid NATS subject.
    pub skipped: u64,
    pub seconds: f64,
}

/// Publishes every message of `reader` into the stream at `url`, paced by `speed`.
pub fn publish(reader: &mut FixtureReader, url: &str, config: &Config, speed: Speed) -> Result<Published, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the publisher: {e}"))?;
    runtime.block_on(publish_all(reader, url, config, speed))
}

async fn publish_all(
    reader: &mut FixtureReader,
    url: &str,
    config: &Config,
    speed: Speed,
) -> Result<Published, String> {
    let pattern = TopicPattern::parse(&config.topics.pattern)?;
    let layout = Layout::new(&config.cluster.subject, config.cluster.partitions, pattern);
    let client = connect(url, &format!("cityops-replay-{}", std::process::id())).await?;
    let js = jetstream::new(client);
    ensure_stream(&js, &config.cluster, &layout).await?;
    let started = Instant::now();
    // Each reading carries an id (`Nats-Msg-Id`): one sent again after a lost ack is
    // stored once (JetStream's duplicate window).
    let run = format!("{}-{}", std::process::id(), wall_now_ms());
    let mut origin: Option<i64> = None;
    let (mut messages, mut skipped) = (0u64, 0u64);
    let mut waiting = VecDeque::new();
    for msg in reader.messages() {
        let msg = msg.map_err(|e| e.to_string())?;
        let subject = match layout.subject_for_topic(&msg.topic) {
            Ok(subject) => subject,
            Err(e) => {
                if skipped < 5 {
                    tracing::warn!("replay: {e}; skipped");
                }
                skipped += 1;
                continue;
            }
        };
        let origin = *origin.get_or_insert(msg.at_ms);
        let due = speed.due(msg.at_ms, origin, messages);
        if let Some(wait) = due.and_then(|due| due.checked_sub(started.elapsed())) {
            tokio::time::sleep(wait).await;
        }
        let id = format!("{run}-{messages}");
        let ack = send(&js, &subject, &id, &msg.payload).await?;
        waiting.push_back((ack, subject, id, msg.payload));
        settle(&js, &mut waiting, IN_FLIGHT - 1).await?;
        messages += 1;
    }
    settle(&js, &mut waiting, 0).await?;
    Ok(Published {
        messages,
        skipped,
        seconds: started.elapsed().as_secs_f64(),
    })
}
