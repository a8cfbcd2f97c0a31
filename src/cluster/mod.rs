//! Scale-out on NATS JetStream: several instances share a city's stream, each computing
//! the partitions it holds a lease on.
//!
//! ```text
//! devices ─MQTT─► NATS (MQTT listener or a Mosquitto bridge) ─mapping─► stream <subject>.<p>.<topic>
//! replay --to-nats ──────────────────────────────(partitioned here)──►   (fixed partitions)
//!   stream ─pull consumer per held partition─► a pipeline per partition ─► instance sinks
//!   stream ─pull consumer of every partition─► the whole-stream pipeline (rules over many devices)
//!   lease bucket (KV, compare-and-swap, epochs) ◄─► keeper thread ─► Ownership ─► fence
//!   delivery bucket (KV) ◄─► fence in the sink thread: each notification sent once
//!   checkpoint bucket (object store) ◄── fence: each partition's state at a cut, once its
//!                                        warnings went out; ──► a takeover goes on from it
//! ```
//!
//! - `partition`: a reading's partition (NATS's `partition()` hash) and subject.
//! - `stream`: connecting, creating or checking the stream and the lease bucket.
//! - `lease`: the pure lease plan; `keeper`: the thread carrying it out; `ownership`:
//!   what is held now, shared.
//! - `checkpoints`: each partition's checkpoint in the object store.
//! - `instance`: the source loop of `run --nats` (a pipeline per partition, ticks);
//!   `consumer`: a held partition's reader; `forward`: the partition pipelines' sink;
//!   `fence`: what the instance may send; `handover`: a stop's or a balance release's last
//!   checkpoints.
//! - `publish`: `replay --to-nats`.
//!
//! Exactness: a partition's pipeline is a pure function of the partition's stream (its
//! readings and ticks, with stream timestamps), so any instance computing it gets the same
//! warnings, and its state at a stream sequence is the same whoever computed it: a takeover
//! goes on from the stored checkpoint (refilling open windows from the stream) and the
//! delivery record keeps it from sending anything twice. Rules over many
//! devices (not grouped by `device_id`) run in the whole-stream slot, leased like a
//! partition, which reads every partition in stream order (see `partition`).

pub(crate) mod checkpoints;
pub(crate) mod consumer;
pub(crate) mod fence;
pub(crate) mod forward;
pub(crate) mod handover;
pub(crate) mod instance;
pub(crate) mod keeper;
pub(crate) mod lease;
pub(crate) mod ownership;
pub(crate) mod partition;
pub(crate) mod publish;
pub(crate) mod stream;

pub use instance::ClusterSource;
pub use publish::{Published, publish};

use crate::config::Config;
use crate::topic::TopicPattern;

fn layout_of(config: &Config) -> Result<partition::Layout, String> {
    let pattern = TopicPattern::parse(&config.topics.pattern)?;
    Ok(partition::Layout::new(
        &config.cluster.subject,
        config.cluster.partitions,
        pattern,
    ))
}

/// The stream subject `replay --to-nats` publishes `topic` to under `config`: the same one
/// the server's mapping (`server_mapping`) gives what a device publishes over NATS.
pub fn stream_subject(config: &Config, topic: &str) -> Result<String, String> {
    layout_of(config)?.subject_for_topic(topic).map_err(|e| e.to_string())
}

/// The server's `mappings` entry that partitions device subjects as cityops does, as
/// (subject, destination): `"city.*.*.*": "cityops.{{partition(32,1,3)}}.city.…"`.
pub fn server_mapping(config: &Config) -> Result<(String, String), String> {
    Ok(layout_of(config)?.server_mapping())
}
