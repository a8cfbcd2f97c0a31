//! Getting telemetry in: the sources (the live MQTT subscription with its QoS 1 acks, and
//! fixture replay), and the decode stage that turns payloads into typed rows (`scan`, its
//! allocation-free fast path; `decode`, which explains every rejection) and runs on the
//! decode `worker` threads. Sources never decode; the decoder never does I/O. A fixture's
//! lines are read by `fixture`, whose common envelope `envelope` scans without parsing the
//! payload. `partition_feed` feeds one stream partition on a cluster instance (`run --nats`).
//! `takeover` tells the MQTT source when another client keeps taking its client id.

pub(crate) mod acks;
pub(crate) mod decode;
pub(crate) mod envelope;
pub(crate) mod fixture;
pub(crate) mod mqtt;
pub(crate) mod partition_feed;
pub(crate) mod recovery;
pub(crate) mod replay;
pub(crate) mod scan;
pub(crate) mod takeover;
pub(crate) mod wal;
pub(crate) mod worker;
